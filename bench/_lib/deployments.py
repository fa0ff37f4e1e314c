"""A bench machine deployed by the real agent: its image and setups made in the BAAS's
``manage.py shell``, one deployment queued and powered per run, and the ``baas-agent``
process timed from its start to its exit (``flash.py``; ``syncback.py`` too)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path

from flash_images import NextVersion

from _lib.baas import Baas
from _lib.testimage import TestImage
from _lib.util import PYTHON, REPO, log, run
from _lib.util import byte_compile as compile_packages

AGENT = REPO / ".venv" / "bin" / "baas-agent"
MAC = "52:54:00:be:ec:01"
DISK = "/dev/sda"
NAME = "bench-flash"
CPU_FIELDS = ("ru_utime", "ru_stime")

# Version 0 of ``image`` as an upload leaves it (the raw image, sparse, and its data map),
# then stored as its image asks by the compression job itself (syncback.py's set-up too).
VERSION_ZERO_CODE = """\
path = get_storage().version_path(image.uuid, 0, "none")
path.parent.mkdir(parents=True, exist_ok=True)
try:
    os.link(spec["raw"], path)
except OSError:
    shutil.copyfile(spec["raw"], path)
version = Version.objects.create(
    image=image, number=0, size=spec["size"], sha256=spec["sha256"], virtual_size=spec["size"],
    stored_size=path.stat().st_blocks * 512, stored_compression="none", uploaded_by=owner)
version_map_build(version_id=version.pk)
version_compress(version_id=version.pk)
version.refresh_from_db()
"""
SETUP_CODE = (
    """\
import json, os, shutil
from pathlib import Path
from django.contrib.auth import get_user_model
from catalogue.models import Image, ImageFrozen, ImageSetup, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map_build
from catalogue.storage import get_storage
from flashing.models import MacAddress, Machine, MachineDisk
spec = json.loads(os.environ["BENCH_SPEC"])
owner = get_user_model().objects.get(username="bench")
image = Image.objects.create(name=spec["name"], owner=owner, compression="zstd",
                             target_disk=spec["disk"])
"""
    + VERSION_ZERO_CODE
    + """\
path = get_storage().version_path(image.uuid, 0, version.stored_compression)
setup = ImageSetup.objects.create(name=spec["name"], owner=owner)
ImageFrozen.objects.create(setup=setup, image=image, version=version, sync=False)
# Version 1, the same image with 1 % of its data changed, stored the same way.
following = get_storage().version_path(image.uuid, 1, "none")
try:
    os.link(spec["next_raw"], following)
except OSError:
    shutil.copyfile(spec["next_raw"], following)
version = Version.objects.create(
    image=image, number=1, size=spec["size"], sha256=spec["next_sha256"],
    virtual_size=spec["size"], stored_size=following.stat().st_blocks * 512,
    stored_compression="none", uploaded_by=owner)
version_map_build(version_id=version.pk)
version_compress(version_id=version.pk)
setup = ImageSetup.objects.create(name=spec["name"] + "-next", owner=owner)
ImageFrozen.objects.create(setup=setup, image=image, version=version, sync=False)
machine = Machine.objects.create(name=spec["name"], power_driver="command", power_settings={
    "command": spec["command"], "boot_timeout": 3600, "progress_timeout": 3600})
MacAddress.objects.create(machine=machine, address=spec["mac"])
MachineDisk.objects.create(machine=machine, path=spec["disk"], size=spec["size"])
print("IMAGE=" + str(image.uuid))
print("STORED=" + str(path))
"""
)

DEPLOY_CODE = """\
import os
from catalogue.models import ImageSetup
from flashing.models import Machine
from flashing.services.pipeline import deployment_power, machine_start_next
from flashing.services.queue import queue_deployment
name = os.environ["BENCH_NAME"]
machine = Machine.objects.get(name=name)
setup = ImageSetup.objects.get(name=os.environ.get("BENCH_SETUP", name))
queue_deployment(actor=None, machine=machine, setup=setup, sync=False, lease=None)
deployment = machine_start_next(machine_id=machine.pk)
print("POWER=" + deployment_power(deployment_id=deployment.pk, attempt=deployment.attempt))
print("DEPLOYMENT=" + str(deployment.pk))
"""

STATES_CODE = """\
import json, os
from flashing.models import Deployment
rows = Deployment.objects.filter(machine__name=os.environ["BENCH_NAME"]).order_by("id")
print("STATES=" + json.dumps([[d.pk, d.state, d.failure_reason] for d in rows]))
"""


def shell(baas: Baas, code: str, extra: dict[str, str]) -> dict[str, str]:
    """``manage.py shell -c`` in the BAAS environment; returns its ``KEY=value`` lines."""
    out = run(
        [str(PYTHON), "manage.py", "shell", "-c", code], cwd=baas.repo, env={**baas.env, **extra}
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


class Deployments:
    """The bench machine, its setup of the test image, and one deployment per agent run."""

    def __init__(self, baas: Baas, image: TestImage, following: NextVersion, run_dir: Path):
        self.baas = baas
        self.run_dir = run_dir
        self.token_file = run_dir / "boot-token"
        self.count = 0
        self.last_cpu = 0.0  # CPU seconds of the last agent run
        command = f"printf '%s' \"$BAAS_TOKEN\" > {self.token_file}"
        spec = {
            "name": NAME,
            "disk": DISK,
            "mac": MAC,
            "raw": str(image.raw),
            "size": image.size,
            "sha256": image.sha256,
            "next_raw": str(following.raw),
            "next_sha256": following.sha256,
            "command": command,
        }
        started = time.perf_counter()
        found = shell(baas, SETUP_CODE, {"BENCH_SPEC": json.dumps(spec)})
        self.image_uuid = found["IMAGE"]
        self.stored = Path(found["STORED"])
        log(
            f"version 0 mapped and stored by the compression job in "
            f"{time.perf_counter() - started:.1f} s (untimed): {self.stored.name}, "
            f"{self.stored.stat().st_size / (1 << 20):.0f} MiB (zstd -T0 -3: "
            f"{image.zst.stat().st_size / (1 << 20):.0f} MiB)"
        )

    def start(self, setup: str = NAME) -> str:
        """Queue, start and power a deployment (untimed); returns its one-time boot token."""
        self.token_file.unlink(missing_ok=True)
        found = shell(self.baas, DEPLOY_CODE, {"BENCH_NAME": NAME, "BENCH_SETUP": setup})
        if found.get("POWER") != "powered" or not self.token_file.exists():
            raise SystemExit(f"the deployment was not powered: {found}")
        return self.token_file.read_text().strip()

    def agent_command(self, token: str, target: Path) -> list[str]:
        return [
            str(AGENT),
            "--server",
            self.baas.url(""),
            "--mac",
            MAC,
            "--token",
            token,
            "--disk",
            f"{DISK}={target}",
            "--kernel-cmdline",
            "/dev/null",
        ]

    def flash(
        self,
        target: Path,
        *,
        profile: Path | None = None,
        setup: str = NAME,
        code: Path | None = None,
    ) -> tuple[float, str]:
        """One deployment: the agent process timed from start to exit. (seconds, its log).

        ``code``: a checkout (``--before``) whose agent runs instead of this tree's, by the
        same command (its ``agent`` directory first on ``PYTHONPATH``).
        """
        token = self.start(setup)
        self.count += 1
        log_path = self.run_dir / f"agent-{self.count}.log"
        command = self.agent_command(token, target)
        if profile is not None:
            command = [str(PYTHON), "-m", "cProfile", "-o", str(profile), "-m", "baas_agent"]
            command += self.agent_command(token, target)[1:]
        env = None
        if code is not None:
            env = {**os.environ, "PYTHONPATH": str(code / "agent")}
        os.sync()
        with open(log_path, "wb") as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            # A blocking wait: ``wait(timeout=…)`` polls with sleeps of up to 50 ms, which
            # added 0-50 ms to every agent's time (re-flashes came out as 0.27, 0.32, 0.37 s).
            watchdog = threading.Timer(3600, proc.kill)
            watchdog.start()
            try:
                status = proc.wait()
            finally:
                watchdog.cancel()
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The agent's own CPU time (user + system): what a loaded machine does not inflate.
        self.last_cpu = sum(getattr(after, f) - getattr(before, f) for f in CPU_FIELDS)
        text = log_path.read_text(errors="replace")
        if status != 0:
            raise SystemExit(f"the agent exited with {status}:\n{text[-3000:]}")
        return seconds, text

    def states(self) -> list:
        return json.loads(shell(self.baas, STATES_CODE, {"BENCH_NAME": NAME})["STATES"])


def byte_compile(*checkouts: Path | None) -> None:
    """Byte-compile the agents' packages (untimed), as the management OS ships them.

    Its image holds the agent's ``.pyc`` files (``mgmt_os/check.py``); without
    them, and with ``PYTHONDONTWRITEBYTECODE`` set (as in some shells), each
    agent run would compile its sources again, which no machine does.
    """
    for checkout in checkouts:
        if checkout is not None:
            compile_packages(checkout / "agent" / "baas_agent", checkout / "diskimage")
