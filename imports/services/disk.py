"""The ``disk`` layout: an image that boots on its own.

An MBR with SYSLINUX's boot code and two partitions: an active FAT boot
partition (1 MiB in, as partitioning tools place it) holding SYSLINUX, the
kernel and initramfs found in the image's ``/boot`` and a ``syslinux.cfg``
that boots them with ``root=LABEL=<label>`` (``root=PARTUUID=`` when the image
has no initramfs: the kernel then finds the root alone), and the ext4 root
partition after it. Made without root or loop devices: ``mformat``/``mcopy``
(mtools) and ``syslinux --offset`` work on the file, the root filesystem is
made on its own and copied in, holes kept.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from imports.exceptions import ImportRefused
from imports.services import layers, oci
from imports.services.tools import run_tool

MiB = 1 << 20
START = 2048  # sectors: the boot partition at 1 MiB
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
KERNEL_RE = re.compile(r"^vmlinuz-(.+)\Z")


def find_kernel(rootfs: Path) -> tuple[Path, Path | None]:
    """The newest /boot/vmlinuz-* and its initrd.img-*, if any."""
    boot = rootfs / "boot"
    kernels = sorted(
        (p for p in boot.glob("vmlinuz-*") if p.is_file() and not p.is_symlink()),
        key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)],
    )
    if not kernels:
        raise ImportRefused(
            "The 'disk' layout boots the kernel in the image's /boot/vmlinuz-*, and this image "
            "has none: install a kernel in it (Debian: linux-image-amd64), or import it as "
            "'filesystem' and boot it with a boot image. Nothing was stored."
        )
    kernel = kernels[-1]
    version = KERNEL_RE.match(kernel.name).group(1)  # type: ignore[union-attr]
    initrd = boot / f"initrd.img-{version}"
    return kernel, initrd if initrd.is_file() else None


def syslinux_cfg(*, root: str, initrd: bool) -> str:
    lines = [
        "SERIAL 0 115200",
        "DEFAULT system",
        "PROMPT 0",
        "TIMEOUT 0",
        "LABEL system",
        "  KERNEL /vmlinuz",
    ]
    if initrd:
        lines.append("  INITRD /initrd.img")
    lines.append(f"  APPEND root={root} rw console=tty0 console=ttyS0,115200 panic=10")
    return "\n".join(lines) + "\n"


def make_disk(
    rootfs: Path, tree: layers.Tree, *, path: Path, root_size: int, label: str, ctx: oci.Context
) -> None:
    kernel, initrd = find_kernel(rootfs)
    boot_bytes = kernel.stat().st_size + (initrd.stat().st_size if initrd else 0)
    boot_sectors = max(_round_mib(boot_bytes + 8 * MiB), 32 * MiB) // 512
    root_sectors = _round_mib(root_size) // 512
    root_start = START + boot_sectors
    total = (root_start + root_sectors) * 512
    if total > ctx.limit:
        raise ImportRefused(
            f"The disk needs {total} bytes, more than {ctx.limit} ({ctx.limit_why}). "
            "Nothing was stored."
        )
    disk_id = int.from_bytes(os.urandom(4), "little") or 1
    root = f"LABEL={label}" if initrd else f"PARTUUID={disk_id:08x}-02"
    root_fs = ctx.work / "root.ext4"
    oci.make_filesystem(rootfs, tree, path=root_fs, size=root_sectors * 512, label=label, ctx=ctx)
    _partition_table(path, total, disk_id, boot_sectors, root_start, root_sectors)
    _boot_partition(path, ctx, kernel, initrd, boot_sectors, root)
    _copy_sparse(root_fs, path, root_start * 512)
    root_fs.unlink()


def _round_mib(size: int) -> int:
    return -(-size // MiB) * MiB


def _partition_table(
    path: Path, total: int, disk_id: int, boot_sectors: int, root_start: int, root_sectors: int
) -> None:
    chs = b"\xfe\xff\xff"  # "use LBA"
    boot = struct.pack("<B3sB3sII", 0x80, chs, 0x0E, chs, START, boot_sectors)
    root = struct.pack("<B3sB3sII", 0x00, chs, 0x83, chs, root_start, root_sectors)
    code = SYSLINUX_MBR.read_bytes()[:440]
    sector = code.ljust(440, b"\0") + struct.pack("<I", disk_id) + b"\0\0"
    sector += boot + root + bytes(32) + b"\x55\xaa"
    with open(path, "wb") as disk:
        disk.truncate(total)
        disk.write(sector)


def _boot_partition(
    path: Path, ctx: oci.Context, kernel: Path, initrd: Path | None, sectors: int, root: str
) -> None:
    watch = ctx.watch(None, 0, "")
    partition = f"{path}@@{START * 512}"
    run_tool(["mformat", "-i", partition, "-T", str(sectors), "-H", str(START),
              "-h", "64", "-s", "32", "-v", "BAASBOOT", "::"], watch=watch)  # fmt: skip
    run_tool(["syslinux", "--offset", str(START * 512), "--install", str(path)], watch=watch)
    config = ctx.work / "syslinux.cfg"
    config.write_text(syslinux_cfg(root=root, initrd=initrd is not None))
    files = [(kernel, "vmlinuz"), (config, "syslinux.cfg")]
    if initrd is not None:
        files.append((initrd, "initrd.img"))
    for source, name in files:
        run_tool(["mcopy", "-i", partition, str(source), f"::{name}"], watch=watch)


def _copy_sparse(source: Path, target: Path, offset: int) -> None:
    """``source`` into ``target`` at ``offset``; blocks of zeros stay holes."""
    zero = bytes(MiB)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        position = offset
        while chunk := src.read(MiB):
            if chunk != zero[: len(chunk)]:
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)
