"""The 'disk' layout: MBR, an active FAT boot partition with SYSLINUX, the image's newest kernel
and its initramfs, and the ext4 root; read back here without mounting (mtools, debugfs)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from imports.models import State
from tests.imports.helpers import ext4_cat, run_import, stored_path


def partitions(path: Path) -> list[tuple[int, int, int, int]]:
    """(active flag, type, first sector, sectors) of the MBR's used entries."""
    sector = path.read_bytes()[:512] if path.stat().st_size < 1 << 20 else _head(path)
    assert sector[510:512] == b"\x55\xaa"
    found = []
    for i in range(4):
        flag, _, kind, _, start, count = struct.unpack_from("<B3sB3sII", sector, 446 + 16 * i)
        if kind:
            found.append((flag, kind, start, count))
    return found


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(512)


def mtype(path: Path, offset: int, name: str) -> str:
    return subprocess.run(
        ["mtype", "-i", f"{path}@@{offset}", f"::{name}"], capture_output=True, text=True
    ).stdout


def test_an_image_with_a_kernel_becomes_a_bootable_disk(system_image, moderator, images, tmp_path):
    job = run_import(moderator, system_image, oci=images["kernel"], layout="disk", label="sysroot")
    assert job.state == State.DONE, job.reason + job.log
    path = stored_path(job.version)
    (boot_flag, boot_type, boot_start, boot_count), (root_flag, root_type, root_start, root_n) = (
        partitions(path)
    )
    assert (boot_flag, boot_type, boot_start) == (0x80, 0x0E, 2048)
    assert (root_flag, root_type, root_start) == (0, 0x83, boot_start + boot_count)
    assert path.stat().st_size == (root_start + root_n) * 512
    assert _head(path)[:440] == Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    config = mtype(path, boot_start * 512, "syslinux.cfg")
    assert "KERNEL /vmlinuz" in config and "INITRD /initrd.img" in config
    assert "root=LABEL=sysroot" in config and "console=ttyS0,115200" in config
    listing = subprocess.run(
        ["mdir", "-a", "-b", "-i", f"{path}@@{boot_start * 512}", "::"],
        capture_output=True,
        text=True,
    ).stdout
    assert "ldlinux.sys" in listing and "vmlinuz" in listing
    root = tmp_path / "root.ext4"
    with path.open("rb") as disk, root.open("wb") as out:
        disk.seek(root_start * 512)
        out.write(disk.read(root_n * 512))
    assert ext4_cat(root, "/etc/marker") == "a bootable root\n"
    label = subprocess.run(["e2label", str(root)], capture_output=True, text=True).stdout
    assert label.strip() == "sysroot"
    # the newest kernel (6.1.0-10, not 6.1.0-9) went to the boot partition
    kernel = subprocess.run(
        ["mtype", "-i", f"{path}@@{boot_start * 512}", "::vmlinuz"], capture_output=True
    ).stdout
    assert len(kernel) == 64 * 1024


def test_without_an_initramfs_the_kernel_finds_the_root_by_partition_uuid(
    system_image, moderator, images
):
    job = run_import(moderator, system_image, oci=images["kernel-no-initrd"], layout="disk")
    assert job.state == State.DONE, job.reason
    path = stored_path(job.version)
    disk_id = struct.unpack_from("<I", _head(path), 440)[0]
    config = mtype(path, 2048 * 512, "syslinux.cfg")
    assert f"root=PARTUUID={disk_id:08x}-02" in config and "INITRD" not in config


def test_an_image_without_a_kernel_is_refused_for_the_disk_layout(system_image, moderator, images):
    job = run_import(moderator, system_image, oci=images["simple"], layout="disk")
    assert job.state == State.FAILED
    assert "/boot/vmlinuz-*" in job.reason and "import it as 'filesystem'" in job.reason
    assert not system_image.versions.exists()
