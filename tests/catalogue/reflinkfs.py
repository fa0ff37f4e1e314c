"""Real filesystems for the sharing tests: an XFS with reflinks and an ext4, each made in a
file and loop-mounted (root only: skipped otherwise), and what ``filefrag -v`` says."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalogue.filesystems import tool

MiB = 1 << 20
FS_SIZE = 512 * MiB  # XFS wants 300 MiB at least; the file stays sparse


def mounted(directory: Path, kind: str) -> Iterator[Path]:
    """A fresh ``kind`` ("xfs" or "ext4") filesystem mounted on ``directory``/mnt."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting a filesystem needs root")
    backing = directory / f"{kind}.img"
    with backing.open("wb") as handle:
        handle.truncate(FS_SIZE)
    if kind == "xfs":
        subprocess.run([tool("mkfs.xfs"), "-q", "-m", "reflink=1", backing], check=True)
    else:
        subprocess.run([tool("mkfs.ext4"), "-q", "-F", backing], check=True)
    mount = directory / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", backing, mount], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)
        backing.unlink(missing_ok=True)


def fresh_dir(mount: Path) -> Path:
    path = mount / uuid.uuid4().hex
    path.mkdir()
    return path


_EXTENT = re.compile(r"^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+):.*$")


def filefrag(path: Path) -> list[tuple[int, int, bool]]:
    """``(physical block, blocks, shared)`` of each extent, as ``filefrag -v`` prints them."""
    out = subprocess.run(
        [tool("filefrag"), "-v", "-b4096", str(path)], capture_output=True, text=True, check=True
    ).stdout
    extents = []
    for line in out.splitlines():
        match = _EXTENT.match(line)
        if match:
            extents.append((int(match[1]), int(match[3]), "shared" in line.split(":")[-1]))
    return extents


def shared_blocks(path: Path) -> int:
    """Bytes of ``path`` in extents ``filefrag -v`` flags as shared (after a sync: XFS
    frees an unlinked file's blocks in the background)."""
    os.sync()
    return sum(blocks for _, blocks, shared in filefrag(path) if shared) * 4096


def unshared(path: Path, seconds: float = 10.0) -> bool:
    """Whether ``path`` shares no block any more, waiting for XFS to free an unlinked
    file's blocks (its background inode work, which a sync does not always wait for)."""
    deadline = time.monotonic() + seconds
    while shared_blocks(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def common_bytes(first: Path, second: Path) -> int:
    """Bytes of physical blocks both files hold (from ``filefrag -v``)."""
    blocks = [
        {block + i for block, count, _ in filefrag(path) for i in range(count)}
        for path in (first, second)
    ]
    return len(blocks[0] & blocks[1]) * 4096
