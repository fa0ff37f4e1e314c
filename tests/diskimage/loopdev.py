"""A real block device for a test: a loop device over a file (root only; skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def loop_device(
    backing: Path, *, sector_size: int | None = None, partscan: bool = False
) -> Iterator[Path]:
    """``backing`` as a loop device, detached after: with logical blocks of
    ``sector_size``, and with nodes for its partitions if ``partscan``."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup")
    options = ["--sector-size", str(sector_size)] if sector_size else []
    options += ["--partscan"] if partscan else []
    made = subprocess.run(
        ["losetup", "--find", "--show", *options, str(backing)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"no such loop device here: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=False)
