"""The whole agent: check-in, instructions, sync, write, result — against the fake BAAS."""

from __future__ import annotations

import hashlib
import pstats
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from baas_agent import __version__
from baas_agent.cli import kernel_parameters, main

from tests.agent.conftest import MiB, make_image
from tests.agent.servers import FakeBaas
from tests.agent.test_flash import IMAGE, store

USER_DATA = "5d1e7c8a-1111-4a2b-8c3d-000000000002"
MAC = "52:54:00:12:34:56"
AGENT = Path(sys.executable).with_name("baas-agent")


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    # main() installs its own SIGTERM/SIGINT handlers; pytest needs its own back.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def deployment(baas, image, tmp_path):
    """One changed user data disk to sync (sdb), then one image to write (sda)."""
    sda, sdb = tmp_path / "sda.img", tmp_path / "sdb.img"
    make_image(sdb, 4 * MiB, [(MiB, 3000)], seed=7)
    baas.instructions = {
        "sync": [
            {
                "image": USER_DATA,
                "disk": "/dev/sdb",
                "version": 3,
                "size": 4 * MiB,
                "sha256": hashlib.sha256(b"what was flashed").hexdigest(),
                "upload_url": f"/api/image/{USER_DATA}",
            }
        ],
        "write": [store(baas, image, "zstd", tmp_path)],
    }
    return sda, sdb


def agent_args(baas: FakeBaas, sda: Path, sdb: Path) -> list[str]:
    return [
        *("--server", baas.url, "--mac", MAC, "--token", baas.boot_token),
        *("--disk", f"/dev/sda={sda}", "--disk", f"/dev/sdb={sdb}"),
        *("--kernel-cmdline", "/nonexistent", "--retries", "1"),
    ]


def test_kernel_parameters_come_from_the_command_line():
    line = (
        "BOOT_IMAGE=/vmlinuz quiet baas.server=http://10.0.2.2:8000"
        ' baas.mac=52:54:00:aa:bb:cc baas.token="t o"\n'
    )
    assert kernel_parameters(line) == {
        "server": "http://10.0.2.2:8000",
        "mac": "52:54:00:aa:bb:cc",
        "token": "t o",
    }


def test_a_deployment_syncs_then_writes_then_reports_done(baas, deployment, image):
    sda, sdb = deployment
    assert main(agent_args(baas, sda, sdb)) == 0
    assert sda.read_bytes() == image.read_bytes()
    assert baas.uploads[0]["raw"] == sdb.read_bytes()
    (result,) = baas.results
    write = baas.instructions["write"][0]
    assert result == {
        "state": "done",
        "written": [{"image": IMAGE, "version": 4, "disk": "/dev/sda", "sha256": write["sha256"]}],
        "synced": [{"image": USER_DATA, "version": 4, "disk": "/dev/sdb"}],
    }
    checkin = next(h for m, p, h in baas.requests if p == "/api/agent/checkin")
    assert checkin["Authorization"] == f"Bearer {baas.boot_token}"
    paths = [path for _, path, _ in baas.requests if not path.startswith("/api/agent/progress")]
    upload = f"/api/image/{USER_DATA}?disk=%2Fdev%2Fsdb"  # the disk it brings back
    assert paths[:3] == ["/api/agent/checkin", "/api/agent/instructions", upload]
    assert paths[-1] == "/api/agent/result"  # the last lines come with it, kept first
    assert "/api/log" not in paths  # every line fitted in the result's
    assert baas.logs[-1].endswith("done: 1 image(s) written, 1 synced")
    assert any("uploaded as version 4" in line for line in baas.logs)
    assert any("written and verified" in line for line in baas.logs)


def test_one_image_on_two_disks_is_brought_back_naming_each_disk(baas, deployment, tmp_path):
    """User data on /dev/sda2 and /dev/sdb (one image): every report about a sync, each
    upload and each ``synced`` item names its disk, so the server can tell the two apart."""
    sda, sdb = deployment
    make_image(sda, 4 * MiB, [(2 * MiB, 5000)], seed=9)  # /dev/sda2 (the test maps it to sda)
    (entry,) = baas.instructions["sync"]
    baas.instructions = {"sync": [{**entry, "disk": "/dev/sda"}, entry], "write": []}
    assert main(agent_args(baas, sda, sdb)) == 0

    (result,) = baas.results
    assert result["synced"] == [
        {"image": USER_DATA, "version": 4, "disk": "/dev/sda"},
        {"image": USER_DATA, "version": 5, "disk": "/dev/sdb"},
    ]
    assert [(u["disk"], u["raw"]) for u in baas.uploads] == [
        ("/dev/sda", sda.read_bytes()),
        ("/dev/sdb", sdb.read_bytes()),
    ]
    # Each sync's start is announced for its disk (the routine reports, at most one a
    # second per disk, name it too).
    assert {(p["image"], p["disk"]) for p in baas.progress} == {
        (USER_DATA, "/dev/sda"),
        (USER_DATA, "/dev/sdb"),
    }
    assert [p["disk"] for p in baas.progress if p["bytes_done"] == 0] == ["/dev/sda", "/dev/sdb"]


def test_instructions_given_with_the_check_in_are_not_asked_for_again(baas, deployment, image):
    sda, sdb = deployment
    baas.instructions_at_checkin = True
    assert main(agent_args(baas, sda, sdb)) == 0
    assert sda.read_bytes() == image.read_bytes()
    assert baas.results[0]["state"] == "done"
    paths = [path for _, path, _ in baas.requests if not path.startswith("/api/agent/progress")]
    upload = f"/api/image/{USER_DATA}?disk=%2Fdev%2Fsdb"
    assert paths[:2] == ["/api/agent/checkin", upload]  # the sync's upload
    assert "/api/agent/instructions" not in paths


def test_a_wrong_sha256_fails_the_deployment_with_a_clear_reason(baas, deployment):
    sda, sdb = deployment
    baas.instructions["write"][0]["sha256"] = "0" * 64
    assert main(agent_args(baas, sda, sdb)) == 1
    (result,) = baas.results
    assert result["state"] == "failed"
    assert "SHA-256 mismatch" in result["reason"] and IMAGE in result["reason"]
    assert "written" not in result
    # What was brought back before the write failed is in the result, to be recorded.
    assert result["synced"] == [{"image": USER_DATA, "version": 4, "disk": "/dev/sdb"}]
    assert baas.uploads[0]["raw"] == sdb.read_bytes()


def test_network_mounts_are_logged_and_nothing_is_written_for_them(baas, deployment):
    sda, sdb = deployment
    url = "nbd://10.0.2.1:10809/Zm9vYmFy"
    baas.instructions["mounts"] = [
        {"image": USER_DATA, "version": 2, "disk": "/dev/sdc", "state": "ready", "url": url}
    ]
    assert main(agent_args(baas, sda, sdb)) == 0
    (result,) = baas.results
    assert result["state"] == "done"
    assert [w["disk"] for w in result["written"]] == ["/dev/sda"]
    assert any(url in line and "/dev/sdc" in line for line in baas.logs)


def test_an_unmapped_disk_fails_without_touching_anything(baas, deployment):
    sda, sdb = deployment
    baas.instructions["write"][0]["disk"] = "/dev/sdz"
    assert main(agent_args(baas, sda, sdb)) == 1
    assert "/dev/sdz is not one of the mapped disks" in baas.results[0]["reason"]
    assert not sda.exists()


def test_a_cancelled_deployment_stops_the_agent_at_its_next_call(baas, deployment, image):
    sda, sdb = deployment
    first = baas.instructions["write"][0]
    baas.instructions = {"sync": [], "write": [first, {**first, "disk": "/dev/sdb"}]}
    baas.gone_after_progress = 1  # cancelled once the first progress report arrived

    assert main(agent_args(baas, sda, sdb)) == 3

    assert sdb.read_bytes() != image.read_bytes()  # the second image was not written
    assert baas.results == []  # nothing reported: nobody would accept it
    assert len(baas.progress) == 1
    paths = [path for _, path, _ in baas.requests]
    refused = paths[paths.index("/api/agent/progress") + 1 :]
    assert refused == [f"/api/image/{IMAGE}/4", "/api/log"]  # its download, its last lines


def test_a_refused_check_in_ends_with_status_2(baas, deployment):
    sda, sdb = deployment
    args = agent_args(baas, sda, sdb)
    args[args.index(baas.boot_token)] = "a guessed token"
    assert main(args) == 2
    assert baas.results == []


def test_missing_settings_are_named(tmp_path, caplog):
    assert main(["--kernel-cmdline", str(tmp_path / "none"), "--server", "http://x"]) == 2
    assert "missing mac, token: give --mac --token or baas.mac= baas.token=" in caplog.text


def test_the_installed_command_reads_the_kernel_command_line(baas, deployment, tmp_path, image):
    sda, sdb = deployment
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"quiet baas.server={baas.url} baas.mac={MAC} baas.token={baas.boot_token}")
    done = subprocess.run(
        [
            str(AGENT),
            *("--kernel-cmdline", str(cmdline)),
            *("--disk", f"/dev/sda={sda}", "--disk", f"/dev/sdb={sdb}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert baas.results[0]["state"] == "done"
    assert sda.read_bytes() == image.read_bytes()
    assert f"agent {__version__}" in done.stderr


def test_the_installed_command_has_help():
    done = subprocess.run([str(AGENT), "--help"], capture_output=True, text=True, check=True)
    assert "--disk DEVICE=TARGET" in done.stdout


def test_the_agent_under_a_profiler_leaves_its_profile(baas, deployment, tmp_path):
    """The agent ends with os._exit once its work is done, except under a profiler, whose
    file is written when the interpreter ends (the flash benchmark profiles the agent)."""
    sda, sdb = deployment
    args = agent_args(baas, sda, sdb)
    args[args.index(baas.boot_token)] = "a guessed token"  # the shortest run to its end
    profile = tmp_path / "agent.prof"
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "baas_agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "check-in refused" in done.stderr  # (cProfile itself exits 0 whatever the status)
    assert "call_begun" in str(pstats.Stats(str(profile)).stats)  # the agent ran, profiled
