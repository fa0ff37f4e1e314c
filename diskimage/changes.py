"""What changed on a disk since it was flashed with a version: the sender's half of a delta.

Given the base version's data map (its ranges and their BLAKE3s) and the disk:

1. :func:`disk_map` maps the disk with the mapper the server uses
   (:class:`~diskimage.datamap.DataMapper`, BLAKE3 only), reading only its
   data on a file (SEEK_DATA) — what the composed version's map must be, and
   so its digest is sent with the delta (:func:`diskimage.sparsedelta.map_digest`);
2. :func:`suspects` lists the base's ranges that the disk does not hold as
   they were (no range of the disk's map with the same bounds and BLAKE3);
3. :func:`changed_runs` finds the runs to send: every block of the disk's
   data outside the base's ranges (data where the base had zeros), and in
   each suspect range, the blocks now zero and the blocks whose BLAKE3
   differs from the base's (:func:`diskimage.sparsedelta.block_hashes`, which the
   server computes from the base's bytes). Without the base's block hashes
   of a range, all of its data is sent: more bytes, the same result.

A range found unchanged is trusted as the agent's "is the image still
there?" check trusts it (BLAKE3); the receiver then checks the whole result
against the disk's map, so a wrong guess is refused, never stored.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from diskimage import BLOCK, READ_CHUNK
from diskimage.datamap import DataMap, DataMapper
from diskimage.holes import ShortRead, data_extents, is_zeros
from diskimage.sparsedelta import HASH_BYTES, Run, block_hashes

Progress = Callable[[int], None]


def _pread(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, end - start, start)
    while len(data) < end - start:
        more = os.pread(fd, end - start - len(data), start + len(data))
        if not more:
            raise ShortRead(5, f"the disk ended at byte {start + len(data)}")
        data += more
    return data


def disk_map(fd: int, size: int, *, sparse: bool, progress: Progress | None = None) -> DataMap:
    """The data map of the first ``size`` bytes of ``fd`` (BLAKE3 only, no SHA-256s).

    On a file (``sparse``), holes are skipped unread; a device is read whole. The
    next piece is read on a thread while this one is mapped (reads and BLAKE3 both
    let go of the GIL): one pass over the disk, two cores busy.
    """
    mapper = DataMapper(sha256=False)
    extents = data_extents(fd, 0, size, align=BLOCK) if sparse else [(0, size)]
    pieces = [
        (at, min(end, at + READ_CHUNK))
        for start, end in extents
        for at in range(start, end, READ_CHUNK)
    ]
    # Two buffers, read into again and again: the mapper keeps nothing of what it is fed,
    # and fresh 4 MiB objects would cost a page fault per page (half the time of a map).
    buffers = [bytearray(READ_CHUNK), bytearray(READ_CHUNK)]
    position = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="disk-map") as reader:
        ahead = reader.submit(_read_into, fd, buffers[0], *pieces[0]) if pieces else None
        for n, (start, end) in enumerate(pieces):
            assert ahead is not None
            ahead.result()
            buffer = buffers[n % 2]
            if n + 1 < len(pieces):
                ahead = reader.submit(_read_into, fd, buffers[(n + 1) % 2], *pieces[n + 1])
            if start > position:
                mapper.skip(start - position)
            mapper.update(buffer, end - start)  # in place: no copy of a short last piece
            position = end
            if progress is not None:
                progress(end)
    if position < size:
        mapper.skip(size - position)
    return mapper.finish("")


def _read_into(fd: int, buffer: bytearray, start: int, end: int) -> None:
    length = end - start
    got = os.preadv(fd, [memoryview(buffer)[:length]], start)
    if got < length:  # a short read: the rest, or ShortRead
        buffer[got:length] = _pread(fd, start + got, end)


def suspects(base: DataMap, disk: DataMap) -> list[int]:
    """Indices of the base's ranges the disk does not hold unchanged."""
    if base.blake3 is None or disk.blake3 is None:
        return list(range(len(base.ranges)))
    held = {
        (start, end, fast) for (start, end, _), fast in zip(disk.ranges, disk.blake3, strict=True)
    }
    return [
        index
        for index, ((start, end, _), fast) in enumerate(zip(base.ranges, base.blake3, strict=True))
        if (start, end, fast) not in held
    ]


def changed_runs(
    fd: int,
    base: DataMap,
    disk: DataMap,
    suspect: Sequence[int],
    hashes: Mapping[int, bytes],
) -> list[Run]:
    """The runs of the disk that differ from the base, in order, merged.

    ``hashes[i]``: the base's block hashes of its range ``i`` (HASH_BYTES per
    BLOCK); a suspect range without them is sent whole (its data blocks).
    """
    runs = list(_new_data(base, disk))
    for index in suspect:
        start, end, _ = base.ranges[index]
        runs.extend(_range_changes(fd, start, end, hashes.get(index)))
    return merged(runs)


def _new_data(base: DataMap, disk: DataMap) -> Iterable[Run]:
    """The disk's data outside the base's ranges (where the base holds zeros)."""
    bounds = [(start, end) for start, end, _ in base.ranges]
    starts = [start for start, _ in bounds]
    for start, end, _ in disk.ranges:
        position = start
        index = max(0, bisect_left(starts, start) - 1)
        while position < end and index < len(bounds):
            range_start, range_end = bounds[index]
            if range_start >= end:
                break
            if range_end > position:
                if range_start > position:
                    yield Run(position, range_start)
                position = max(position, range_end)
            index += 1
        if position < end:
            yield Run(position, end)


def _range_changes(fd: int, start: int, end: int, expected: bytes | None) -> Iterable[Run]:
    data = _pread(fd, start, end)
    view = memoryview(data)
    found = block_hashes(data) if expected is not None else b""
    if expected is not None and len(expected) != len(found):
        expected = None  # not this range's: send its data whole
    for at in range(0, len(data), BLOCK):
        block = view[at : at + BLOCK]
        if is_zeros(block):
            yield Run(start + at, start + at + len(block), zeros=True)
            continue
        cut = slice(at // BLOCK * HASH_BYTES, (at // BLOCK + 1) * HASH_BYTES)
        if expected is None or found[cut] != expected[cut]:
            yield Run(start + at, start + at + len(block))


def merged(runs: Iterable[Run]) -> list[Run]:
    """``runs`` in order, neighbours of the same kind joined."""
    out: list[Run] = []
    for run in sorted(runs, key=lambda r: r.start):
        if out and out[-1].end == run.start and out[-1].zeros == run.zeros:
            out[-1] = Run(out[-1].start, run.end, run.zeros)
        else:
            out.append(run)
    return out


def changed_bytes(runs: Iterable[Run]) -> int:
    return sum(run.length for run in runs)
