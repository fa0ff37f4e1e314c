"""``flash.py``'s look inside the agent: its write path taken apart in-process, each phase
timed alone, and the agent run under cProfile."""

from __future__ import annotations

import os
import pstats
import subprocess
import time
from pathlib import Path

from _lib.baas import Baas
from _lib.deployments import Deployments
from _lib.flash_report import CHECK_ALONE, START_ALONE
from _lib.flash_rounds import fresh
from _lib.testimage import TestImage
from _lib.util import PYTHON, log


def _drain(chunks) -> None:
    for _ in chunks:
        pass


def _local_chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _zero_scan(path: Path) -> None:
    from baas_agent.compress import decompressed

    from diskimage.holes import data_runs

    for chunk in decompressed(_local_chunks(path), "zstd"):
        data_runs(chunk)


def _write_ranges(chunks, target: Path, size: int, datamap) -> None:
    from baas_agent.compress import decompressed
    from baas_agent.disks import RangeWriter

    ranges = [(start, end) for start, end, _ in datamap.ranges]
    with RangeWriter(fresh(target), size, ranges) as writer:
        for chunk in decompressed(chunks, "zstd"):
            writer.write(chunk)
        writer.close()


def _land(chunks, target: Path, datamap, medium: bool) -> None:
    """``baas_agent.landing.land`` onto a fresh target; ``medium=False`` writes through the
    page cache and reads back from it (no ``O_DIRECT``, no cache drops)."""
    import baas_agent.landing as landing

    saved = landing.to_medium, landing.drop_cached, landing._Disk.can_go_direct
    if not medium:
        landing.to_medium = lambda fd, offset, length: None
        landing.drop_cached = lambda path: None
        landing._Disk.can_go_direct = lambda self, start, end: False  # type: ignore[method-assign]
    try:
        reason = landing.land(chunks, "zstd", fresh(target), datamap)
    finally:
        landing.to_medium, landing.drop_cached, landing._Disk.can_go_direct = saved
    if reason is not None:
        raise SystemExit(f"landing failed: {reason}")


def _disk_alone(source: Path, target: Path, datamap) -> None:
    """What any flash that checks the medium spends on this disk, with nothing decoded or
    hashed: the map's ranges copied from the (cached) raw image with ``O_DIRECT`` on four
    threads, as the agent lands them, one fsync, then read back with ``O_DIRECT``."""
    import mmap
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    src = os.open(source, os.O_RDONLY)
    fresh(target)
    out = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(out, datamap.size)
    direct = [os.open(target, flags | os.O_DIRECT) for flags in (os.O_WRONLY, os.O_RDONLY)]

    def one(item, write: bool) -> None:
        start, end, _ = item
        if not hasattr(local, "buffer"):
            local.buffer = memoryview(mmap.mmap(-1, 16 << 20))
        view = local.buffer[: end - start]
        if write:
            os.preadv(src, [view], start)
            os.pwritev(direct[0], [view], start)
        else:
            os.preadv(direct[1], [view], start)

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: one(item, True), datamap.ranges))
            os.fsync(out)
            list(pool.map(lambda item: one(item, False), datamap.ranges))
    finally:
        for fd in (src, out, *direct):
            os.close(fd)


# What the agent imports before it checks a disk (its start-up).
START_IMPORTS = (
    "import baas_agent.cli, baas_agent.flash, baas_agent.check, diskimage.verify, blake3"
)


def _start_alone() -> None:
    subprocess.run([str(PYTHON), "-c", START_IMPORTS], check=True)


def phases(baas: Baas, deployments: Deployments, image: TestImage, target: Path) -> dict:
    """The agent's write path taken apart in-process, each phase timed alone (warm cache)."""
    from baas_agent.client import Client
    from baas_agent.compress import decompressed
    from baas_agent.disks import hash_target

    from diskimage.datamap import DataMap
    from diskimage.verify import mismatch

    client = Client(baas.url(""), baas.token)
    url = f"/api/image/{deployments.image_uuid}/0"
    zst = image.zst
    steps = {
        "download of the whole .zst (HTTP from gunicorn only)": lambda: _drain(
            client.download(url)
        ),
        "decompress the whole .zst (local, zstandard)": lambda: _drain(
            decompressed(_local_chunks(zst), "zstd")
        ),
        "decompress the whole .zst + zero-block scan": lambda: _zero_scan(zst),
        "download of the data stream only": lambda: _drain(client.download(f"{url}/data")),
        "data stream: download + decompress": lambda: _drain(
            decompressed(client.download(f"{url}/data"), "zstd")
        ),
        "data stream: download + decompress + write ranges + fsync": lambda: _write_ranges(
            client.download(f"{url}/data"), target, image.size, datamap
        ),
        "land (the agent's write path: decompress, write, read back, BLAKE3), read back "
        "from the medium (O_DIRECT)": lambda: _land(
            client.download(f"{url}/data"), target, datamap, True
        ),
        "land, the same through the page cache, read back from it (no medium)": lambda: _land(
            client.download(f"{url}/data"), target, datamap, False
        ),
        "the disk alone: the ranges written (O_DIRECT), fsynced, read back (O_DIRECT); nothing "
        "decoded or hashed": lambda: _disk_alone(image.raw, target, datamap),
        "verify: hash_target (SEEK_DATA, holes hashed)": lambda: hash_target(target, image.size),
        "verify: data map, SHA-256 (ranges hashed in parallel, holes skipped)": lambda: mismatch(
            target, datamap
        ),
        CHECK_ALONE: lambda: mismatch(target, datamap, fast=True),
        START_ALONE: _start_alone,
    }
    datamap = DataMap.from_json(client.get_json(f"{url}/map"), size=image.size, sha256=image.sha256)
    out: dict[str, float] = {}
    for name, function in steps.items():
        os.sync()
        start = time.perf_counter()
        function()
        out[name] = time.perf_counter() - start
        log(f"  phase {name}: {out[name]:.2f} s")
    target.unlink(missing_ok=True)
    return out


def profile_summary(path: Path, top: int = 12) -> list[str]:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime")
    width = stats.total_tt or 1.0
    rows = []
    for func, (_cc, calls, tottime, cumtime, _callers) in sorted(
        stats.stats.items(), key=lambda item: item[1][2], reverse=True
    )[:top]:
        where = f"{Path(func[0]).name}:{func[1]}({func[2]})"
        rows.append(
            f"{tottime:7.2f} s {100 * tottime / width:5.1f} %  cum {cumtime:7.2f} s  "
            f"{calls:>8} calls  {where}"
        )
    return rows


def profile_agent(deployments: Deployments, target: Path, run_dir: Path) -> dict:
    """The agent under cProfile: a full flash onto a fresh target, then a re-flash."""
    out = {}
    fresh(target)
    for what in ("full", "reflash"):
        path = run_dir / f"{what}.prof"
        seconds, _ = deployments.flash(target, profile=path)
        out[f"profile_{what}"] = {"seconds": seconds, "top": profile_summary(path)}
        log(f"cProfile of the agent, {what} ({seconds:.1f} s under the profiler)")
    return out
