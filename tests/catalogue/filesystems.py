"""Small real filesystem images for the tests: FAT (mtools) and ext4 (mkfs.ext4 -d), no root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MiB = 1 << 20


def run(*args: str | Path) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is missing: ./dev installs mtools and e2fsprogs")
    return path


def fat_image(path: Path, files: dict[str, bytes], *, label: str = "BOOT", size: int = 4 * MiB):
    """A FAT filesystem image holding ``files`` ({"boot/vmlinuz": b"…"}), made with mtools."""
    with path.open("wb") as handle:
        handle.truncate(size)
    run(tool("mformat"), "-i", path, "-v", label, "::")
    made: set[str] = set()
    for name, content in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                run(tool("mmd"), "-i", path, f"::/{directory}")
                made.add(directory)
        source = path.parent / f".{path.name}.src"
        source.write_bytes(content)
        run(tool("mcopy"), "-i", path, source, f"::/{name}")
        source.unlink()
    return path


def ext4_image(path: Path, files: dict[str, bytes], *, label: str = "boot", size: int = 4 * MiB):
    """An ext4 filesystem image holding ``files``, made with ``mkfs.ext4 -d`` (no root)."""
    tree = path.parent / f"{path.name}.d"
    for name, content in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    tree.mkdir(parents=True, exist_ok=True)
    run(tool("mkfs.ext4"), "-q", "-F", "-L", label, "-d", tree, path, f"{size // 1024}k")
    shutil.rmtree(tree)
    return path


def fat_extract(image: Path, into: Path) -> Path:
    """Every file of a FAT image copied into the directory ``into`` (what a mount shows)."""
    into.mkdir(parents=True, exist_ok=True)
    run(tool("mcopy"), "-s", "-n", "-i", image, "::/*", into)
    return into


def fat_read(image: Path, name: str, *, offset: int = 0) -> bytes:
    """One file of a FAT image (at byte ``offset`` of ``image``), read with mcopy."""
    done = subprocess.run(
        [tool("mcopy"), "-n", "-i", f"{image}@@{offset}", f"::/{name}", "-"],
        capture_output=True,
        check=False,
        env={"MTOOLS_SKIP_CHECK": "1"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fat_label(image: Path) -> str:
    return run(tool("mlabel"), "-i", image, "-s", "::").split("is", 1)[-1].strip()


KERNEL = b"\x4d\x5a" + b"not really a kernel, but bytes we chose " * 1000
INITRD = b"\x07\x07\x01" + b"an initramfs of our own " * 3000
CMDLINE = b"console=ttyS0,115200\nquiet  baas.test=1\n"


def boot_files(prefix: str = "") -> dict[str, bytes]:
    """A kernel, an initrd and a command line, under ``prefix`` (``""`` or ``"boot/"``)."""
    return {f"{prefix}vmlinuz": KERNEL, f"{prefix}initrd.img": INITRD, f"{prefix}cmdline": CMDLINE}
