"""The management OS boots in QEMU, runs the real agent and powers the machine off.

The kernel and initramfs are built by ``mgmt_os.build`` into var/mgmt-os (cached:
rebuilt only when the packages, /init or the agent change; the first build needs
the Debian package repositories). The VM runs under software emulation with
QEMU's user network, where the host is 10.0.2.2: a tiny HTTP server here plays
the BAAS server, records the agent's check-in and refuses it, so the agent exits.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mgmt_os import build as mgmt_build
from mgmt_os.files import sha256_file
from mgmt_os.host import BuildError
from mgmt_os.initramfs import write_initrd

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "var" / "mgmt-os"
CACHE = REPO / "var" / "cache" / "mgmt-os"
MAC = "52:54:00:ba:a5:08"
TOKEN = "boot-token-Zq3"
BOOT_TIMEOUT = 120  # seconds, under software emulation


@pytest.fixture(scope="module")
def mgmt_os() -> dict:
    try:
        return mgmt_build.build(out=OUT, cache=CACHE)
    except BuildError as exc:
        pytest.fail(f"cannot build the management OS: {exc}")


class RefusingServer(ThreadingHTTPServer):
    """Records every request and answers 401, as BAAS does to a used boot token."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    server: RefusingServer

    def do_GET(self) -> None:
        self._refuse(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._refuse(self.rfile.read(length))

    def _refuse(self, body: bytes) -> None:
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        answer = json.dumps({"detail": "This boot token has already been used."}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def refusing_server():
    server = RefusingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def boot(mgmt_os_dir: Path, disk: Path, cmdline: str, console: Path) -> int:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.fail("qemu-system-x86_64 is missing: ./dev installs qemu-system-x86")
    command = [
        qemu,
        "-nographic",
        "-m",
        "512",
        "-kernel",
        str(mgmt_os_dir / "vmlinuz"),
        "-initrd",
        str(mgmt_os_dir / "initrd.img"),
        "-append",
        cmdline,
        "-netdev",
        "user,id=n0",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-drive",
        f"file={disk},format=raw,if=virtio",
        "-no-reboot",
    ]
    with console.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            return process.wait(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            tail = console.read_text(errors="replace")[-3000:]
            pytest.fail(f"the VM did not power off within {BOOT_TIMEOUT} s; console:\n{tail}")


def test_boots_runs_the_agent_and_powers_off(mgmt_os, refusing_server, tmp_path):
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    console = tmp_path / "console.log"
    port = refusing_server.server_address[1]
    cmdline = (
        f"console=ttyS0 baas.server=http://10.0.2.2:{port} baas.mac={MAC} "
        f"baas.token={TOKEN} baas.disk=/dev/sda=/dev/vda baas.after=poweroff"
    )

    started = time.monotonic()
    status = boot(OUT, disk, cmdline, console)
    elapsed = time.monotonic() - started
    text = console.read_text(errors="replace")
    markers = "\n".join(line for line in text.splitlines() if "BAAS-MGMT:" in line)

    assert status == 0, f"QEMU exited {status}:\n{text[-3000:]}"
    assert len(refusing_server.requests) == 1, (refusing_server.requests, markers)
    checkin = refusing_server.requests[0]
    assert (checkin["method"], checkin["path"]) == ("POST", "/api/agent/checkin")
    assert checkin["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = json.loads(checkin["body"])
    assert body["mac"] == MAC
    assert body["agent_version"] == mgmt_os["agent"]["version"]

    assert re.search(
        r"BAAS-MGMT: init started: .*kernel " + re.escape(mgmt_os["kernel"]["release"]), markers
    ), markers
    assert re.search(r"BAAS-MGMT: drivers loaded; disks: .*\bvda\b", markers), markers
    assert re.search(r"BAAS-MGMT: network up: eth0 10\.0\.2\.\d+/24 gateway 10\.0\.2\.2", markers)
    assert "--disk /dev/sda=/dev/vda" in markers
    assert TOKEN not in markers  # the token is not echoed on the console
    # 2: the agent's status for a refused check-in (agent/baas_agent/cli.py).
    assert re.search(r"^BAAS-MGMT: agent exited 2 ", markers, re.MULTILINE), markers
    assert "BAAS-MGMT: powering off" in markers
    assert elapsed < BOOT_TIMEOUT


def test_manifest_describes_the_outputs(mgmt_os):
    for name, info in mgmt_os["files"].items():
        assert sha256_file(OUT / name) == info["sha256"]
    for module in ("virtio_pci", "virtio_net", "virtio_blk"):
        assert module in mgmt_os["modules"]
    # Dependencies load first.
    assert mgmt_os["modules"].index("virtio_ring") < mgmt_os["modules"].index("virtio_pci")
    assert mgmt_os["modules"].index("net_failover") < mgmt_os["modules"].index("virtio_net")
    assert mgmt_os["kernel"]["package"] in mgmt_os["packages"]
    on_disk = json.loads((OUT / "manifest.json").read_text())
    assert on_disk == mgmt_os


def test_the_agent_in_the_image_has_its_accelerators(mgmt_os):
    """zstandard (landing on every core) and blake3 (its checks and read-backs) import in
    the image's own Python: Debian's zstandard, and the blake3 the tests run, copied in."""
    accelerators = mgmt_os["agent"]["accelerators"]
    assert accelerators["blake3"] == importlib.metadata.version("blake3")
    assert accelerators["zstandard"] == mgmt_os["packages"]["python3-zstandard"].split("-")[0]


def test_an_unchanged_build_is_not_redone(mgmt_os):
    before = {name: (OUT / name).stat().st_mtime_ns for name in mgmt_os["files"]}
    assert mgmt_build.build(out=OUT, cache=CACHE) == mgmt_os
    assert {name: (OUT / name).stat().st_mtime_ns for name in mgmt_os["files"]} == before


def test_the_initramfs_archive_is_deterministic(tmp_path):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "sh").symlink_to("bin/tool")
    archives = []
    for _ in range(2):
        path = tmp_path / f"initrd-{len(archives)}.img"
        write_initrd(root, path, mtime=0)
        archives.append(path.read_bytes())
        (root / "bin" / "tool").touch()  # a new mtime changes nothing
    assert archives[0] == archives[1]
    listing = subprocess.run(
        ["sh", "-c", f"zstd -dc {tmp_path / 'initrd-0.img'} | cpio -it --quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listing.returncode == 0:  # cpio is optional on the host
        assert listing.stdout.split() == ["dev", "dev/console", "bin", "bin/tool", "sh"]
