"""The blocks of a delta: ranges of which only some blocks changed, written block by block.

A delta's ``parts`` (docs/agent-protocol.md §5a) are runs of blocks of the new
version's ranges that differ from what the disk holds there if it holds the
base, each with the BLAKE3 of its new bytes; the rest of each such range is on
the disk already. For each range, in order, the agent:

1. takes the range's runs from the download (``GET <data_url>?ranges=4/0-3,4/9``:
   their raw bytes, in order; a long list goes in a few requests) and checks
   each against its digest (the BLAKE3 of its blocks' BLAKE3s,
   ``diskimage.sparsedelta.hashes_digest``) — a damaged download is not the
   disk's fault;
2. reads the range from the disk, puts the runs in place and hashes the
   result against the new map's hash of the range (BLAKE3, else SHA-256): a
   mismatch means the disk does not hold the base as recorded, and nothing of
   the range is written;
3. writes the runs, puts them on the medium (out of the page cache) and reads
   them back: they must be the bytes downloaded.

Ranges are landed on a pool of threads beside the download; at most two ranges (16
MiB each) and their runs per thread are in memory at a time.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baas_agent.disks import _pwrite_all, open_in_place, to_medium
from diskimage import BLOCK
from diskimage.datamap import DataMap
from diskimage.holes import ShortRead
from diskimage.medium import Disk
from diskimage.selection import format_part
from diskimage.sparsedelta import block_hashes, hashes_digest
from diskimage.verify import default_workers, read_buffer

try:
    import blake3
except ImportError:  # pragma: no cover - the range's SHA-256 then checks the runs too
    blake3 = None  # type: ignore[assignment]

Part = tuple[int, int, int, str]  # map index, [start, end) in the image, digest of the new bytes


class NotHeld(Exception):
    """The disk does not hold the base where a range keeps its bytes."""


class NotLanded(Exception):
    """The runs came damaged, or did not read back as written."""


def check_parts(parts: tuple[Part, ...], datamap: DataMap, changed: set[int]) -> str | None:
    """None if ``parts`` fit ``datamap`` (inside their ranges, on blocks, in order, apart,
    not in a range that goes whole), else what is wrong."""
    previous = (-1, 0)
    for index, start, end, digest in parts:
        if index >= len(datamap.ranges) or index in changed:
            return f"a part names range {index}, which is not a range that changes by parts"
        low, high, _ = datamap.ranges[index]
        if (
            not low <= start < end <= high
            or (start - low) % BLOCK
            or ((end - low) % BLOCK and end != high)
        ):
            return f"the part {start}-{end} is not blocks of the range {low}-{high}"
        if (index, start) < previous or (index == previous[0] and start < previous[1]):
            return "the delta's parts are out of order or overlap"
        if len(digest) != 64:
            return f"the part {start}-{end} has no digest"
        previous = (index, end)
    return None


def selections(parts: tuple[Part, ...], datamap: DataMap, limit: int) -> list[tuple[str, int]]:
    """``?ranges=`` values naming the parts (``index/a-b``), each at most ``limit`` characters,
    with the bytes each answer holds."""
    out: list[tuple[str, int]] = []
    items: list[str] = []
    size = length = 0
    for index, start, end, _ in parts:
        low = datamap.ranges[index][0]
        item = format_part(index, start - low, end - low)
        if items and length + 1 + len(item) > limit:
            out.append((",".join(items), size))
            items, size, length = [], 0, 0
        length += len(item) + (1 if items else 0)
        items.append(item)
        size += end - start
    if items:
        out.append((",".join(items), size))
    return out


@dataclass
class _Reader:
    """Exact lengths taken from a stream of chunks."""

    chunks: Iterator[bytes]
    pending: bytes = b""

    def take(self, length: int) -> bytes:
        pieces, have = [self.pending], len(self.pending)
        while have < length:
            chunk = next(self.chunks, None)
            if chunk is None:
                raise NotLanded(f"the download ended {length - have} bytes early")
            pieces.append(chunk)
            have += len(chunk)
        data = b"".join(pieces)
        self.pending = data[length:]
        return data[:length]


def land_parts(
    chunks: Iterable[bytes],
    target: Path,
    datamap: DataMap,
    parts: tuple[Part, ...],
    progress: Callable[[int], None] | None = None,
    *,
    workers: int | None = None,
) -> None:
    """Write ``parts`` (their bytes are ``chunks``, in order) onto ``target``, range by range,
    as the module says, the ranges on a pool of threads beside the download. Raises
    :class:`NotHeld` or :class:`NotLanded`."""
    workers = workers or default_workers()
    reader = _Reader(iter(chunks))
    fd = open_in_place(target, datamap.size)
    disk = Disk(target)  # the kept bytes: from the cache if it holds them, else the medium
    inflight: collections.deque[tuple[Future[None], int]] = collections.deque()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parts") as pool:
            try:
                for index, runs in _by_range(parts):
                    got = [
                        (a, b, _checked(reader.take(b - a), a, b, digest)) for a, b, digest in runs
                    ]
                    task = pool.submit(_land_range, fd, disk, datamap, index, got)
                    inflight.append((task, datamap.ranges[index][1]))
                    while len(inflight) >= 2 * workers:  # bounded memory: a few ranges each
                        _done(inflight.popleft(), progress)
                if reader.pending or next(reader.chunks, b""):
                    raise NotLanded("the download holds more than the delta's parts")
                while inflight:
                    _done(inflight.popleft(), progress)
            finally:
                for task, _ in inflight:
                    task.cancel()
        os.fsync(fd)
    finally:
        disk.close()
        os.close(fd)


def _done(item: tuple[Future[None], int], progress: Callable[[int], None] | None) -> None:
    task, end = item
    task.result()
    if progress is not None:
        progress(end)


def _land_range(
    fd: int, disk: Disk, datamap: DataMap, index: int, runs: list[tuple[int, int, bytes]]
) -> None:
    """Check the range with ``runs`` in place, write them, and read them back from the medium."""
    _check_range(disk, datamap, index, runs)
    read_fd = disk.fd
    for start, _, data in runs:
        _pwrite_all(fd, data, start)
    first, last = runs[0][0], runs[-1][1]
    to_medium(fd, first, last - first)  # one wait for the range's writes
    for start, end, data in runs:
        if _pread(read_fd, start, end) != data:
            raise NotLanded(f"bytes {start}-{end} did not read back as written")
    os.posix_fadvise(read_fd, first, last - first, os.POSIX_FADV_DONTNEED)


def _by_range(parts: tuple[Part, ...]) -> Iterator[tuple[int, list[tuple[int, int, str]]]]:
    runs: list[tuple[int, int, str]] = []
    current = -1
    for index, start, end, digest in parts:
        if index != current and runs:
            yield current, runs
            runs = []
        current = index
        runs.append((start, end, digest))
    if runs:
        yield current, runs


def _checked(data: bytes, start: int, end: int, digest: str) -> bytes:
    if blake3 is not None and hashes_digest(block_hashes(data)) != digest:
        raise NotLanded(f"bytes {start}-{end} came damaged (BLAKE3 mismatch)")
    return data


def _check_range(
    disk: Disk, datamap: DataMap, index: int, runs: list[tuple[int, int, bytes]]
) -> None:
    """The range as the disk holds it with ``runs`` in place must hash as the map says.

    The disk's bytes go through this thread's read buffer, the runs' from memory: no copy
    of the range is made (a fresh 16 MiB, twice, cost ~16 ms of page faults per range).
    """
    low, high, sha256 = datamap.ranges[index]
    fast = datamap.blake3 is not None and blake3 is not None
    hasher: Any = blake3.blake3() if fast else hashlib.sha256()
    position = low
    try:
        for start, end, data in [*runs, (high, high, b"")]:
            for piece in disk.pieces(position, start, read_buffer()):
                hasher.update(piece)
            hasher.update(data)
            position = end
    except ShortRead as exc:
        raise NotHeld(str(exc)) from exc
    expected = datamap.blake3[index] if fast and datamap.blake3 is not None else sha256
    if hasher.hexdigest() != expected:
        raise NotHeld(f"bytes {low}-{high} differ from the image outside the changed blocks")


def _pread(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, end - start, start)
    while len(data) < end - start:
        more = os.pread(fd, end - start - len(data), start + len(data))
        if not more:
            raise NotHeld(f"the disk ended at byte {start + len(data)}")
        data += more
    return data
