"""Landing a version's data stream on a disk, range by range, on every core.

The data stream (docs/agent-protocol.md §5) is the bytes of the data map's
ranges, in order: raw, or one zstd frame per range. Ranges are independent,
so each is *landed* on a pool of threads — decompressed, written at its
offset, read back from the disk and hashed against the map — while the
download goes on; ``zstandard`` and ``hashlib`` release the GIL, so the pool
keeps every core busy. At most two ranges per thread (and two more) are in
memory at a time, each at most 16 MiB, whatever the image's size.

Contract: :func:`land` returns None when every range is on the disk and
matches its SHA-256, every other byte of the image reads as zero and the
disk is fsynced; else what differs, as a sentence. A stream of other ranges
than the map's raises :class:`~baas_agent.disks.DiskError` or
:class:`~baas_agent.compress.CompressionError`. :func:`land_delta` does the
same for a delta: the changed ranges alone are in the stream and written, the
runs that became zeros are zeroed, and both are verified.

What is read back is the medium, not the page cache: each range is synced
and dropped from the cache before it is read (:func:`~baas_agent.disks.to_medium`),
and dropped again once hashed, so nothing the agent wrote stays cached.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from baas_agent.compress import CompressionError, zstd_frames
from baas_agent.disks import (
    DiskError,
    SparseWriter,
    Zeroer,
    _pwrite_all,
    drop_cached,
    is_block_device,
    open_in_place,
    to_medium,
    zero_run,
)
from diskimage import READ_CHUNK
from diskimage.datamap import DataMap
from diskimage.delta import Delta
from diskimage.verify import Verifier, default_workers

try:
    import zstandard
except ImportError:  # pragma: no cover - the caller then writes sequentially
    zstandard = None  # type: ignore[assignment]

Progress = Callable[[int], None]


def can_land(encoding: str) -> bool:
    """Whether this agent lands a stream of ``encoding`` in parallel (zstd needs zstandard)."""
    return encoding == "none" or (encoding == "zstd" and zstandard is not None)


def land(
    chunks: Iterable[bytes],
    encoding: str,
    target: Path,
    datamap: DataMap,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> str | None:
    """Write the data stream ``chunks`` (``none`` or ``zstd``) onto ``target``; verify it."""
    workers = workers or default_workers()
    block_device = is_block_device(target)
    with SparseWriter(target, datamap.size) as writer:
        if writer.zeroer is not None:  # a device: the gaps are zeroed by the device itself
            for start, end in datamap.gaps():
                writer._zero_from = start
                writer._flush_zeros(end)
        read_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            reason = _land_all(chunks, encoding, writer.fd, read_fd, datamap, workers, progress)
        finally:
            os.close(read_fd)
        if reason is not None:
            return reason
        os.fsync(writer.fd)
    drop_cached(target)  # the gaps are read from the medium too
    with Verifier(target, datamap, workers=workers, sparse=not block_device) as verifier:
        verifier.check_gaps()
        return verifier.result()


def land_delta(
    chunks: Iterable[bytes],
    encoding: str,
    target: Path,
    datamap: DataMap,
    delta: Delta,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> str | None:
    """Turn a disk holding a delta's base into ``datamap``'s image, in place.

    ``chunks`` is the data stream of the changed ranges alone (``delta.changed``,
    in order); they are written and verified as :func:`land` does, and the runs
    of ``delta.zeros`` are zeroed (punched on a file, ``BLKZEROOUT`` or written
    zeros on a device) and read back as zeros. The caller has checked that the
    disk holds the rest (:meth:`Delta.kept`, :meth:`Delta.kept_zeros`).
    """
    workers = workers or default_workers()
    changed = DataMap(
        size=datamap.size,
        sha256=datamap.sha256,
        ranges=tuple(datamap.ranges[index] for index in delta.changed),
    )
    fd = open_in_place(target, datamap.size)
    try:
        zeroer = Zeroer(fd)
        for start, end in delta.zeros:
            zero_run(zeroer, start, end)
        read_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            reason = _land_all(chunks, encoding, fd, read_fd, changed, workers, progress)
        finally:
            os.close(read_fd)
        if reason is not None:
            return reason
        os.fsync(fd)
    finally:
        os.close(fd)
    drop_cached(target)
    sparse = not is_block_device(target)
    with Verifier(target, datamap, workers=workers, sparse=sparse) as verifier:
        for start, end in delta.zeros:
            verifier.check_zeros(start, end)
        return verifier.result()


def _land_all(
    chunks: Iterable[bytes],
    encoding: str,
    fd: int,
    read_fd: int,
    datamap: DataMap,
    workers: int,
    progress: Progress | None,
) -> str | None:
    ranges = datamap.ranges
    landed = 0
    inflight: collections.deque[tuple[Future[str | None], int]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="land") as pool:
        try:
            for index, payload in enumerate(_pieces(chunks, encoding, datamap)):
                if index >= len(ranges):
                    raise DiskError("the data stream holds more than the image's ranges")
                task = pool.submit(_land_one, fd, read_fd, ranges[index], payload, encoding)
                inflight.append((task, ranges[index][1]))
                while len(inflight) >= 2 * workers + 2:  # bounded memory: a few ranges each
                    if reason := _done(inflight.popleft(), progress):
                        return reason
                landed = index + 1
            if landed != len(ranges):
                raise DiskError(f"the data stream ended after {landed} of {len(ranges)} ranges")
            while inflight:
                if reason := _done(inflight.popleft(), progress):
                    return reason
        finally:
            for task, _ in inflight:
                task.cancel()
    return None


def _done(item: tuple[Future[str | None], int], progress: Progress | None) -> str | None:
    task, end = item
    reason = task.result()
    if reason is None and progress is not None:
        progress(end)
    return reason


def _pieces(chunks: Iterable[bytes], encoding: str, datamap: DataMap) -> Iterator[bytes]:
    """The stream cut into one piece per range: zstd frames, or raw bytes by length."""
    if not datamap.ranges:
        for chunk in chunks:
            if chunk:
                raise DiskError("the data stream holds more than the image's ranges")
        return
    if encoding == "zstd":
        yield from zstd_frames(chunks)
        return
    lengths = iter([end - start for start, end, _ in datamap.ranges])
    wanted: int | None = next(lengths)
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while wanted is not None and len(pending) >= wanted:
            yield bytes(pending[:wanted])
            del pending[:wanted]
            wanted = next(lengths, None)
        if wanted is None and pending:
            raise DiskError("the data stream holds more than the image's ranges")
    if wanted is not None:
        raise DiskError("the data stream ended inside a range")


def _land_one(
    fd: int, read_fd: int, item: tuple[int, int, str], payload: bytes, encoding: str
) -> str | None:
    """Decompress one range, write it at its offset, read it back and check its SHA-256."""
    start, end, digest = item
    data = payload
    if encoding == "zstd":
        try:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=end - start)
        except zstandard.ZstdError as exc:
            raise CompressionError(f"corrupt zstd frame for bytes {start}-{end}: {exc}") from exc
    if len(data) != end - start:
        return f"bytes {start}-{end} came as {len(data)} bytes"
    _pwrite_all(fd, data, start)
    del data
    to_medium(fd, start, end - start)  # the read-back below reads the disk, not memory
    sha = hashlib.sha256()
    buffer = bytearray(min(READ_CHUNK, end - start))
    view = memoryview(buffer)
    position = start
    while position < end:
        got = os.preadv(read_fd, [view[: min(len(view), end - position)]], position)
        if got == 0:
            return f"the disk ended at byte {position}, inside bytes {start}-{end}"
        sha.update(view[:got])
        position += got
    os.posix_fadvise(read_fd, start, end - start, os.POSIX_FADV_DONTNEED)
    if sha.hexdigest() != digest:
        return f"bytes {start}-{end} differ from the image (SHA-256 mismatch)"
    return None
