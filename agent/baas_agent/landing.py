"""Landing a version's data stream on a disk, range by range, on every core.

The data stream (docs/agent-protocol.md §5) is the bytes of the data map's
ranges, in order: raw, or one zstd frame per range. Ranges are independent,
so each is *landed* on a pool of threads — decompressed, written at its
offset, read back from the disk and hashed against the map — while the
download goes on; ``zstandard``, ``blake3`` and ``hashlib`` release the GIL,
so the pool keeps every core busy. At most two ranges per thread (and two
more) are in memory at a time, each at most 16 MiB, whatever the image's
size, and each thread reuses its buffers.

Contract: :func:`land` returns None when every range is on the disk and
matches the map — its BLAKE3 when the map has one and this agent has the
``blake3`` module, else (and on a BLAKE3 mismatch) its SHA-256, the hash of
record — every other byte of the image reads as zero and the disk is
fsynced; else what differs, as a sentence. A stream of other ranges
than the map's raises :class:`~baas_agent.disks.DiskError` or
:class:`~baas_agent.compress.CompressionError`. :func:`land_delta` does the
same for a delta: the changed ranges alone are in the stream and written, the
runs that became zeros are zeroed, and both are verified.

What is read back is the medium, not the page cache: where the target takes
``O_DIRECT``, whole-block ranges are written and read back with it (nothing
goes through the cache); otherwise each range is synced and dropped from the
cache before it is read (:func:`~baas_agent.disks.to_medium`), and dropped
again once hashed. Either way nothing the agent wrote stays cached.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import mmap
import os
import threading
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
from diskimage import BLOCK, READ_CHUNK
from diskimage.datamap import RANGE_MAX, DataMap
from diskimage.delta import Delta
from diskimage.verify import Verifier, default_workers

try:
    import zstandard
except ImportError:  # pragma: no cover - the caller then writes sequentially
    zstandard = None  # type: ignore[assignment]
try:
    import blake3
except ImportError:  # pragma: no cover - then writes are verified by SHA-256 alone
    blake3 = None  # type: ignore[assignment]

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
        with _Disk(target, writer.fd) as disk:
            reason = _land_all(chunks, encoding, disk, datamap, workers, progress)
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
        blake3=(
            tuple(datamap.blake3[index] for index in delta.changed)
            if datamap.blake3 is not None
            else None
        ),
    )
    fd = open_in_place(target, datamap.size)
    try:
        zeroer = Zeroer(fd)
        for start, end in delta.zeros:
            zero_run(zeroer, start, end)
        with _Disk(target, fd) as disk:
            reason = _land_all(chunks, encoding, disk, changed, workers, progress)
        if reason is not None:
            return reason
        os.fsync(fd)
        for start, end in delta.zeros:  # the ranges left nothing cached (_land_one)
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    sparse = not is_block_device(target)
    with Verifier(target, datamap, workers=workers, sparse=sparse) as verifier:
        for start, end in delta.zeros:
            verifier.check_zeros(start, end)
        reason = verifier.result()
        for start, end in delta.zeros:  # read back, and not left in the cache either
            os.posix_fadvise(verifier.fd, start, end - start, os.POSIX_FADV_DONTNEED)
        return reason


def _land_all(
    chunks: Iterable[bytes],
    encoding: str,
    disk: _Disk,
    datamap: DataMap,
    workers: int,
    progress: Progress | None,
) -> str | None:
    ranges = datamap.ranges
    blake3s = datamap.blake3 if datamap.can_check_fast() else None
    landed = 0
    inflight: collections.deque[tuple[Future[str | None], int]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="land") as pool:
        try:
            for index, payload in enumerate(_pieces(chunks, encoding, datamap)):
                if index >= len(ranges):
                    raise DiskError("the data stream holds more than the image's ranges")
                fast = blake3s[index] if blake3s is not None else None
                task = pool.submit(_land_one, disk, ranges[index], payload, encoding, fast)
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


class _Disk:
    """The descriptors a landing writes and reads the target through.

    ``fd`` (the caller's) writes through the page cache; ``read_fd`` reads back
    what a range left on the medium once :func:`~baas_agent.disks.to_medium`
    dropped it from the cache. Where the target takes ``O_DIRECT`` (a block
    device, most file systems; not tmpfs), whole-block ranges are written and read
    back with it instead: nothing goes through the page cache, so nothing needs
    syncing or dropping, and no byte is copied into it or out of it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.fd = fd
        self.read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.direct: tuple[int, int] | None = None
        try:
            write = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError:  # tmpfs and a few others refuse it: the page cache it is
            return
        try:
            read = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError:
            os.close(write)
            return
        self.direct = self._direct_fds = (write, read)

    def __enter__(self) -> _Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.read_fd)
        for fd in getattr(self, "_direct_fds", ()):
            os.close(fd)

    def refused(self, exc: OSError) -> None:
        """An ``O_DIRECT`` call was refused (``EINVAL``): the page cache from now on."""
        if exc.errno != errno.EINVAL:
            raise exc
        self.direct = None

    def can_go_direct(self, start: int, end: int) -> bool:
        return (
            self.direct is not None
            and start % BLOCK == 0
            and (end - start) % BLOCK == 0
            and end - start <= RANGE_MAX
        )


def _land_one(
    disk: _Disk, item: tuple[int, int, str], payload: bytes, encoding: str, fast: str | None
) -> str | None:
    """Decompress one range, write it at its offset, read it back from the disk and check it.

    The read-back is hashed by BLAKE3 when ``fast`` (the map's BLAKE3 of the range) is
    given, else by SHA-256; a BLAKE3 mismatch is decided by the map's SHA-256 of the
    bytes read back, the hash of record.
    """
    start, end, digest = item
    data: bytes | memoryview
    if disk.can_go_direct(start, end):  # into an aligned buffer, as O_DIRECT wants
        buffer = _aligned("data", RANGE_MAX + BLOCK)
        got = _decode_into(payload, encoding, buffer[: end - start + 1], start, end)
        data = buffer[:got]
    else:
        data = _decode(payload, encoding, start, end)
        got = len(data)
    if got != end - start:
        return f"bytes {start}-{end} came as {got} bytes"
    direct = disk.direct if isinstance(data, memoryview) else None
    if direct is not None:
        try:
            _pwrite_all(direct[0], data, start)  # on the medium when it returns
        except OSError as exc:
            disk.refused(exc)
            direct = None
    if direct is None:
        _pwrite_all(disk.fd, data, start)
        to_medium(disk.fd, start, end - start)  # the read-back below reads the disk
    del data
    if direct is not None:
        try:
            return _check(direct[1], start, end, digest, fast)
        except OSError as exc:
            disk.refused(exc)  # then read through the cache, which O_DIRECT left empty
    try:
        return _check(disk.read_fd, start, end, digest, fast)
    finally:
        os.posix_fadvise(disk.read_fd, start, end - start, os.POSIX_FADV_DONTNEED)


def _check(fd: int, start: int, end: int, digest: str, fast: str | None) -> str | None:
    if fast is not None and _read_hash(fd, start, end, "BLAKE3") == fast:
        return None
    if _read_hash(fd, start, end, "SHA-256") == digest:
        return None
    return f"bytes {start}-{end} differ from the image (SHA-256 mismatch)"


def _decode(payload: bytes, encoding: str, start: int, end: int) -> bytes:
    if encoding != "zstd":
        return payload
    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=end - start)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"corrupt zstd frame for bytes {start}-{end}: {exc}") from exc


def _decode_into(payload: bytes, encoding: str, into: memoryview, start: int, end: int) -> int:
    """Decode ``payload`` into ``into``; the bytes it made (up to ``len(into)``: one more
    than the range's length tells a range that came too long)."""
    if encoding != "zstd":
        size = min(len(payload), len(into))
        into[:size] = memoryview(payload)[:size]
        return len(payload)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(payload)
        got = 0
        while got < len(into) and (count := reader.readinto(into[got:])):
            got += count
        return got
    except zstandard.ZstdError as exc:
        raise CompressionError(f"corrupt zstd frame for bytes {start}-{end}: {exc}") from exc


_buffers = threading.local()


def _aligned(name: str, size: int) -> memoryview:
    """This thread's buffer ``name``: page-aligned (as ``O_DIRECT`` wants), reused, so no
    range faults in fresh pages."""
    view: memoryview | None = getattr(_buffers, name, None)
    if view is None:
        view = memoryview(mmap.mmap(-1, size))
        setattr(_buffers, name, view)
    return view


def _read_hash(fd: int, start: int, end: int, algorithm: str) -> str:
    """The hash of ``[start, end)`` of ``fd``, read in pieces that stay in the CPU's cache."""
    view = _aligned("read", READ_CHUNK)
    hasher = blake3.blake3() if algorithm == "BLAKE3" else hashlib.sha256()
    position = start
    while position < end:
        got = os.preadv(fd, [view[: min(len(view), end - position)]], position)
        if got == 0:
            raise DiskError(f"the disk ended at byte {position}, inside bytes {start}-{end}")
        hasher.update(view[:got])
        position += got
    return hasher.hexdigest()
