"""``flash.py``'s rounds: the agent's full flash, re-flashes (warm and cold) and delta
re-flash, each baseline (bmaptool, ``zstd -dc | dd``) and the ``--before`` agent's, on a
target file made fresh, warmed or dropped from the cache, and checked."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from flash_images import NextVersion

from _lib.deployments import NAME, Deployments
from _lib.flash_report import Row
from _lib.testimage import TestImage
from _lib.util import allocated, log

DELTA_LINE = re.compile(r"(\d+) bytes downloaded, (\d+) written, (\d+) zeroed")


def timed_cmd(cmd: list[str] | str, *, shell_: bool = False) -> float:
    os.sync()
    start = time.perf_counter()
    if shell_:
        subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)
    else:
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)
    return path


def warm(target: Path, size: int) -> None:
    """Read the target's data once (untimed): it is in the page cache, as a flash left it
    before the agent dropped what it verified (the earlier figures' condition)."""
    from baas_agent.disks import read_target

    for _ in read_target(target, size):
        pass


def cold(target: Path, size: int) -> None:
    """Drop the target from the page cache (untimed): as a machine's disk after a reboot."""
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check_target(path: Path, size: int, sha256: str, what: str) -> None:
    """The target holds the image (SHA-256 with holes read as zeros, untimed)."""
    from baas_agent.disks import hash_target

    found = path.stat().st_size
    if found != size:
        raise SystemExit(f"{what}: the target is {found} bytes, not {size}")
    if hash_target(path, size) != sha256:
        raise SystemExit(f"{what}: the target does not hold the image")


def one_round(
    deployments: Deployments,
    target: Path,
    image: TestImage,
    following: NextVersion,
    baselines: dict,
    rows: dict[str, Row],
    deltas: list[tuple[int, int, int]],
    check: bool,
) -> str:
    """BAAS full flash, re-flash, delta re-flash, then each baseline; returns the full
    flash's log."""
    seconds, text = deployments.flash(fresh(target))
    if "already there" in text:
        raise SystemExit("a fresh target was reported as already holding the image")
    rows["baas"].seconds.append(seconds)
    rows["baas"].cpu.append(deployments.last_cpu)
    rows["baas"].allocated = allocated(target)
    if check:
        check_target(target, image.size, image.sha256, "BAAS")
    log(f"  BAAS full flash   {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    for key, cache in (("reflash", warm), ("reflash_cold", cold)):
        cache(target, image.size)
        seconds, again = deployments.flash(target)
        if "already there" not in again:
            raise SystemExit(f"the re-flash rewrote the image:\n{again[-2000:]}")
        rows[key].seconds.append(seconds)
        rows[key].cpu.append(deployments.last_cpu)
        rows[key].allocated = allocated(target)
        log(f"  BAAS {key:<13}{seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    warm(target, image.size)
    seconds, text_delta = deployments.flash(target, setup=NAME + "-next")
    found = DELTA_LINE.search(text_delta)
    if "delta from v0" not in text_delta or found is None:
        raise SystemExit(f"the re-flash to the next version was no delta:\n{text_delta[-2000:]}")
    rows["delta"].seconds.append(seconds)
    rows["delta"].cpu.append(deployments.last_cpu)
    rows["delta"].allocated = allocated(target)
    deltas.append((int(found[1]), int(found[2]), int(found[3])))
    if check:
        check_target(target, image.size, following.sha256, "BAAS delta")
    log(f"  BAAS delta        {seconds:7.2f} s  (downloaded, written, zeroed: {deltas[-1]})")
    for key, cmd in baselines.items():
        fresh(target)
        seconds = timed_cmd(cmd, shell_=isinstance(cmd, str))
        rows[key].seconds.append(seconds)
        rows[key].allocated = allocated(target)
        if check:
            check_target(target, image.size, image.sha256, key)
        log(f"  {key:<17} {seconds:7.2f} s")
    return text


def before_round(
    deployments: Deployments, target: Path, image: TestImage, rows: dict, code: Path, round_: int
) -> None:
    """The ``--before`` agent's full flash, re-flash and delta (target warm), as ``one_round``'s."""
    seconds, text = deployments.flash(fresh(target), code=code)
    if "already there" in text:
        raise SystemExit("a fresh target was reported as already holding the image")
    rows["before_baas"].seconds.append(seconds)
    rows["before_baas"].cpu.append(deployments.last_cpu)
    if round_ == 0:
        check_target(target, image.size, image.sha256, "--before BAAS")
    log(f"  before full flash {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    warm(target, image.size)
    seconds, again = deployments.flash(target, code=code)
    if "already there" not in again:
        raise SystemExit(f"the --before re-flash rewrote the image:\n{again[-2000:]}")
    rows["before_reflash"].seconds.append(seconds)
    rows["before_reflash"].cpu.append(deployments.last_cpu)
    log(f"  before reflash    {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    warm(target, image.size)
    seconds, text = deployments.flash(target, setup=NAME + "-next", code=code)
    if "delta from v0" not in text:
        raise SystemExit(f"the --before re-flash to the next version was no delta:\n{text[-2000:]}")
    rows["before_delta"].seconds.append(seconds)
    rows["before_delta"].cpu.append(deployments.last_cpu)
    log(f"  before delta      {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
