"""``baas setup|machine|lease|deploy|deployment|token`` against a live server.

``baas deploy --watch`` follows a real deployment: the end-to-end rig of
tests/flashing/e2e.py (a Celery worker, the real agent flashing sparse files),
its terminal output read through a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import threading

import pytest

from accounts.models import AccessToken
from catalogue.models import ImageSetup, ImageType
from flashing.tasks import deployments_watchdog_task
from tests.cli.conftest import BAAS
from tests.flashing.e2e import image_bytes, make_rig

pytestmark = pytest.mark.django_db(transaction=True)


def test_setup_create_pin_show_ls_unpin(baas_ada, ada):
    image = baas_ada.json("image", "create", "debian", "--target-disk", "/dev/sda")
    created = baas_ada.json("setup", "create", "exp1", "--description", "first")
    pinned = baas_ada.json("setup", "pin", "exp1", "debian@0", "--sync")
    assert (pinned["image"], pinned["version"], pinned["sync"]) == (image["uuid"], 0, True)
    shown = baas_ada.json("setup", "show", "exp1")
    assert shown["uuid"] == created["uuid"] and [p["image_name"] for p in shown["images"]] == [
        "debian"
    ]
    assert "debian" in baas_ada("setup", "show", created["uuid"]).stdout
    assert [s["name"] for s in baas_ada.json("setup", "ls")] == ["exp1"]
    assert "exp1" in baas_ada("setup", "ls").stdout
    baas_ada("setup", "unpin", "exp1", "debian")
    assert not ImageSetup.objects.get(name="exp1").frozen_images.exists()
    assert "No setup named" in baas_ada("setup", "show", "nope", code=2).stderr


def test_setup_layout_declares_the_partition_table_and_pins_go_into_it(baas_ada, ada):
    baas_ada.json("image", "create", "rootfs", "--target-disk", "/dev/sda")
    baas_ada.json("setup", "create", "parted")
    laid = baas_ada.json(
        "setup", "layout", "parted", "--disk", "/dev/sda",
        "--part", "boot:512M:esp", "--part", "root:8G", "--part", "home:rest:home",
    )  # fmt: skip
    assert laid["layout"]["disk"] == "/dev/sda"
    parts = laid["layout"]["partitions"]
    assert [(p["label"], p["size"], p["type"], p["device"]) for p in parts] == [
        ("boot", 512 << 20, "esp", "/dev/sda1"),
        ("root", 8 << 30, "linux", "/dev/sda2"),
        ("home", None, "home", "/dev/sda3"),
    ]
    pinned = baas_ada.json("setup", "pin", "parted", "rootfs@0", "--partition", "root")
    assert (pinned["partition"], pinned["disk"]) == ("root", "/dev/sda2")
    shown = baas_ada("setup", "show", "parted").stdout
    assert "partition table on /dev/sda" in shown and "rest of the disk" in shown
    assert "/dev/sda3" in shown

    # The server's rules, its words, exit 1; nothing changes.
    refused = baas_ada("setup", "layout", "parted", "--disk", "/dev/sda",
                       "--part", "a:rest", "--part", "b:1G", code=1)  # fmt: skip
    assert "rest" in refused.stderr.lower() and "Traceback" not in refused.stderr
    assert ImageSetup.objects.get(name="parted").layout["partitions"][0]["label"] == "boot"
    # What the client cannot read, exit 2, before any request.
    for bad in (["--part", "root:8X"], ["--part", "root"]):
        error = baas_ada("setup", "layout", "parted", "--disk", "/dev/sda", *bad, code=2).stderr
        assert "Not a partition" in error
    assert "or --none" in baas_ada("setup", "layout", "parted", code=2).stderr

    gone = baas_ada("setup", "layout", "parted", "--none", code=1).stderr  # a pin is in it
    assert "partition" in gone.lower()
    baas_ada("setup", "unpin", "parted", "rootfs")
    cleared = baas_ada.json("setup", "layout", "parted", "--none")
    assert cleared["layout"] is None and ImageSetup.objects.get(name="parted").layout is None


def test_tokens_ls_create_revoke(baas_ada, ada):
    made = baas_ada.json("token", "create", "ci", "--scope", "read")
    assert made["token"].startswith("baas_") and made["scopes"] == ["read"]
    assert {t["name"] for t in baas_ada.json("token", "ls")} >= {"ci"}
    assert "ci" in baas_ada("token", "ls").stdout
    baas_ada("token", "revoke", str(made["id"]))
    assert not AccessToken.objects.filter(pk=made["id"]).exists()
    assert "404" in baas_ada("token", "revoke", str(made["id"]), code=1).stderr


def _run_in_pty(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run ``baas`` with a terminal as its standard input, output and error; what it drew."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [str(BAAS), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


@pytest.fixture
def rig(celery_worker, live_server, tmp_path, administrator):
    yield from make_rig(live_server, tmp_path, administrator)


def _beat(stop: threading.Event) -> None:
    """The watchdog, sent each second as beat would (tests/flashing/e2e.py)."""
    while not stop.wait(1.0):
        deployments_watchdog_task.delay()


@pytest.mark.worker
def test_machines_leases_and_a_watched_deployment(baas, rig, administrator):
    baas.login(administrator.username)
    machine = rig.machine
    setup = rig.setup(rig.image(ImageType.SINGLE, "/dev/sda", image_bytes(1)))
    listed = baas.json("machine", "ls")
    assert machine.name in [m["name"] for m in listed]
    assert machine.name in baas("machine", "ls").stdout
    assert baas.json("machine", "show", machine.name)["name"] == machine.name
    assert baas.json("machine", "show", machine.mac)["name"] == machine.name
    leased = baas.json("lease", machine.name, "--hours", "2")
    assert leased["user"] == administrator.username
    extended = baas.json("lease", "extend", machine.name, "--hours", "3")
    assert extended["ends_at"] > leased["ends_at"]

    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(stop,), daemon=True)
    beat.start()
    try:
        env = baas.environ(COLUMNS="120", TERM="xterm")
        code, drawn = _run_in_pty(["deploy", machine.name, setup.name, "--watch"], env)
    finally:
        stop.set()
        beat.join()
    assert code == 0, drawn
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    assert "━" in plain, "no progress bar was drawn"
    assert re.search(r"Deployment \d+ done\.", plain), plain
    assert "writing" in plain and "queued" in plain  # the event log went by
    assert drawn.rstrip().endswith(("done.", "\x1b[?25h")) or "\x1b[?25h" in drawn  # cursor back
    deployment_id = int(re.search(r"Deployment (\d+) done", plain)[1])
    rig.settle()

    assert deployment_id in [d["id"] for d in baas.json("deployment", "ls")]
    assert str(deployment_id) in baas("deployment", "ls").stdout
    shown = baas.json("deployment", "show", str(deployment_id))
    assert shown["state"] == "done" and shown["events"]
    assert "events" in baas("deployment", "show", str(deployment_id)).stdout
    assert baas.json("deployment", "watch", str(deployment_id))["state"] == "done"

    # A machine that no longer boots an agent: the next deployment waits until cancelled.
    machine.refresh_from_db()
    machine.power_settings = {**machine.power_settings, "command": "true", "boot_timeout": 120}
    machine.save()
    queued = baas.json("deploy", machine.name, setup.name)
    cancelled = baas.json("deployment", "cancel", str(queued["id"]))
    assert cancelled["state"] == "cancelled"
    assert baas.json("deployment", "watch", str(queued["id"]), code=1)["state"] == "cancelled"
    rig.settle()
    baas("lease", "release", machine.name)
    assert baas.json("machine", "show", machine.name)["lease"] is None
