"""A virtual machine as a lab machine: disk images that boot, and the rig that flashes them.

Everything is built without root from what the management OS build already
fetched (``mgmt_os.build``, cached in var/): its Debian kernel, and from its
initramfs busybox and the virtio modules.

* :func:`system_disk` is a bootable system image as a researcher would have
  one: an MBR (SYSLINUX's ``mbr.bin``) with one active FAT partition holding
  SYSLINUX, the kernel and a tiny initramfs whose ``/init`` is the "system":
  it prints a marker on the serial console, mounts the user data disk
  (``/dev/vdb``, ext4) and appends a line to a file there. Made with mtools
  and ``syslinux --offset`` (Debian ``syslinux``, ``syslinux-common``,
  ``mtools``), no loop mount.
* :func:`ext4_image` is a user data image (``mkfs.ext4 -d``), read back with
  ``debugfs`` (:func:`ext4_read`).
* :class:`VmRig` is the end-to-end rig of ``e2e.py`` with a machine whose
  power driver is ``qemu``: the VM network-boots from the live server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from flashing.models import FINAL_STATES, Deployment, DeploymentEvent, Machine, MachineDisk
from flashing.power import qemu
from flashing.tasks import deployments_watchdog_task
from mgmt_os import build as mgmt_build
from mgmt_os.files import write
from mgmt_os.host import BuildError
from mgmt_os.initramfs import write_initrd
from tests.flashing.e2e import Rig

REPO = Path(__file__).resolve().parents[2]
MGMT_OUT = REPO / "var" / "mgmt-os"
MGMT_CACHE = REPO / "var" / "cache" / "mgmt-os"
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MiB = 1 << 20
PARTITION_START = 2048  # sectors: the first partition at 1 MiB, as partitioning tools do
BOOT_MARKER = "BAAS-SYSTEM:"

# The flashed system's /init. {marker} makes the console line unique to this image.
SYSTEM_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /data
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /etc/modules); do insmod "$module"; done
echo "BAAS-SYSTEM: {marker} running, kernel $(uname -r), root $(cat /proc/cmdline)"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; sleep 1; done
if mount -t ext4 /dev/vdb /data; then
    echo "{proof} (boot at $(cut -d' ' -f1 /proc/uptime) s)" >>/data/{proof_file}
    umount /data && sync
    echo "BAAS-SYSTEM: {marker} wrote /{proof_file} on /dev/vdb"
else
    echo "BAAS-SYSTEM: {marker} cannot mount /dev/vdb"
fi
while :; do sleep 3600; done
"""
SYSLINUX_CFG = """SERIAL 0 115200
DEFAULT system
PROMPT 0
TIMEOUT 0
LABEL system
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0,115200 panic=10 quiet
"""


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: ./dev installs {package}")
    return path


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def mgmt_os() -> dict:
    """The management OS (built, or found up to date, in var/mgmt-os)."""
    try:
        return mgmt_build.build(out=MGMT_OUT, cache=MGMT_CACHE)
    except BuildError as exc:
        pytest.fail(f"cannot build the management OS: {exc}")


# --- the flashed system ------------------------------------------------------------------


def cpio_members(archive: bytes):
    """(name, mode, data) of every member of a newc cpio archive."""
    offset = 0
    while True:
        header = archive[offset : offset + 110]
        if header[:6] != b"070701":
            raise ValueError(f"not a newc cpio member at {offset}")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_at = offset + 110
        name = archive[name_at : name_at + name_size - 1].decode()
        data_at = name_at + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return
        yield name, mode, archive[data_at : data_at + size]
        offset = data_at + size + (-size % 4)


def system_initrd(target: Path, work: Path, init: str) -> None:
    """A tiny initramfs: busybox and the virtio modules of the management OS, and ``init``."""
    with (MGMT_OUT / "initrd.img").open("rb") as handle:
        archive = zstandard.ZstdDecompressor().stream_reader(handle).read()
    root = work / "system-root"
    for name, mode, data in cpio_members(archive):
        if name == "bin/busybox" or (name.startswith("lib/modules/") and name.endswith(".ko")):
            write(root / name, data, mode & 0o777)
        elif name == "etc/baas/modules":
            write(root / "etc/modules", data)
    write(root / "init", init, 0o755)
    write_initrd(root, target, mtime=0)


def system_disk(path: Path, work: Path, *, size: int, marker: str, proof: str) -> None:
    """A bootable disk image: MBR, one active FAT partition, SYSLINUX, kernel, initramfs."""
    mcopy = tool("mcopy", "mtools")
    mformat = tool("mformat", "mtools")
    syslinux = tool("syslinux", "syslinux")
    if not SYSLINUX_MBR.exists():
        pytest.fail(f"{SYSLINUX_MBR} is missing: ./dev installs syslinux-common")
    initrd = work / "system-initrd.img"
    system_initrd(
        initrd, work, SYSTEM_INIT.format(marker=marker, proof=proof, proof_file="proof.txt")
    )
    config = work / "syslinux.cfg"
    config.write_text(SYSLINUX_CFG)

    sectors = size // 512 - PARTITION_START
    with path.open("wb") as disk:
        disk.truncate(size)
        boot_code = SYSLINUX_MBR.read_bytes()[:440]
        # One partition: active, FAT16 (LBA), from 1 MiB to the end; CHS fields "use LBA".
        entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff",
                            PARTITION_START, sectors)  # fmt: skip
        disk.write(boot_code.ljust(446, b"\0") + entry + bytes(48) + b"\x55\xaa")
    partition = f"{path}@@{PARTITION_START * 512}"
    run(mformat, "-i", partition, "-T", str(sectors), "-H", str(PARTITION_START),
        "-h", "64", "-s", "32", "-v", "SYSTEM", "::")  # fmt: skip
    run(syslinux, "--offset", str(PARTITION_START * 512), "--install", str(path))
    for source, name in (
        (MGMT_OUT / "vmlinuz", "vmlinuz"),
        (initrd, "initrd.img"),
        (config, "syslinux.cfg"),
    ):
        run(mcopy, "-i", partition, str(source), f"::{name}")


def ext4_image(path: Path, work: Path, *, size: int, files: dict[str, str]) -> None:
    """An ext4 filesystem image holding ``files`` (made without root: mkfs.ext4 -d)."""
    mkfs = tool("mkfs.ext4", "e2fsprogs")
    tree = work / f"{path.name}.d"
    for name, text in files.items():
        write(tree / name, text)
    run(mkfs, "-q", "-F", "-L", "userdata", "-d", str(tree), str(path), f"{size // 1024}k")


def ext4_read(path: Path, name: str) -> str:
    """A file of an ext4 image, read with debugfs (no mount)."""
    return run(tool("debugfs", "e2fsprogs"), "-R", f"cat /{name}", str(path))


# --- the rig --------------------------------------------------------------------------------


@dataclass
class VmRig(Rig):
    """The e2e rig with a ``qemu`` machine: disks /dev/vda and /dev/vdb as files."""

    disks: tuple[str, ...] = ("/dev/vda", "/dev/vdb")
    disk_size: int = 64 * MiB

    def __post_init__(self) -> None:
        self.machine = None  # registered by the test, through the API

    def register(self, name: str, mac: str, *, server: str, boot_timeout: int) -> Machine:
        """Register the VM through the API, as an administrator would."""
        response = self.client.post(
            "/api/machine",
            {
                "name": name,
                "architecture": "x86_64",
                "managed": True,
                "mac_addresses": [mac],
                "disks": [{"path": disk, "size": self.disk_size} for disk in self.disks],
                "power_driver": "qemu",
                "power_settings": {
                    "disks": {disk: str(self.disk(disk)) for disk in self.disks},
                    "server": server,
                    "state_dir": str(self.workdir / f"vm-{name}"),
                    "memory": 512,
                    "boot_timeout": boot_timeout,
                    "progress_timeout": 60,
                },
            },
            format="json",
        )
        assert response.status_code == 201, response.content
        self.machine = Machine.objects.get(name=name)
        self.machine.mac = mac
        assert MachineDisk.objects.filter(machine=self.machine).count() == len(self.disks)
        return self.machine

    def disk(self, device: str) -> Path:
        return self.workdir / f"vm-disk-{device.rsplit('/', 1)[1]}.img"

    def console(self) -> str:
        path = qemu.serial_log(self.machine)
        return path.read_text(errors="replace").replace("\r", "") if path.exists() else ""

    def timeline(self) -> str:
        """Every event of the machine's deployments, timed from the first."""
        events = DeploymentEvent.objects.filter(deployment__machine=self.machine)
        events = list(events.order_by("created_at", "id"))
        if not events:
            return ""
        start = events[0].created_at
        return "\n".join(
            f"  {(e.created_at - start).total_seconds():6.1f} s  #{e.deployment_id} "
            f"{e.action}: {e.message[:150]}"
            for e in events
        )

    def wait(self, deployment_id: int, *, until=FINAL_STATES, timeout: float = 25.0) -> Deployment:
        """Rig.wait, polling less often: QEMU needs the CPU more than the test does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            deployment = Deployment.objects.get(pk=deployment_id)
            if deployment.state in until:
                return deployment
            deployments_watchdog_task.delay()  # as beat would, more often
            time.sleep(1.0)
        pytest.fail(
            f"deployment #{deployment_id} is {deployment.state} after {timeout} s, not "
            f"{list(until)}:\n{self.timeline()}\nconsole:\n{self.console()[-4000:]}"
        )

    def vm_pid(self) -> int | None:
        return qemu.running_pid(self.machine)

    def wait_console(self, text: str, *, timeout: float, after: int = 0) -> float:
        """Wait until ``text`` is on the console (past offset ``after``); the time it took."""
        started = time.monotonic()
        while text not in self.console()[after:]:
            if time.monotonic() - started > timeout:
                pytest.fail(
                    f"not on the console after {timeout} s: {text!r}\n{self.console()[-4000:]}"
                )
            time.sleep(0.2)
        return time.monotonic() - started

    def stop_agents(self) -> None:  # the VM, whatever state the test left it in
        if self.machine is None:
            return
        pid = self.vm_pid()
        if pid is None:
            return
        with contextlib.suppress(Exception):
            qemu.QemuDriver().power_off(self.machine)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def settle(self) -> None:
        if self.machine is not None:
            super().settle()
