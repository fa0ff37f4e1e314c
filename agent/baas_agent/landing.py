"""Landing a version's data stream on a disk, range by range, on every core.

The data stream (docs/agent-protocol.md §5) is the bytes of the data map's
ranges, in order: raw, or one zstd frame per range. Ranges are independent,
so each is *landed* on a pool of threads — decompressed, written at its
offset, read back from the disk and hashed against the map — while the
download goes on; ``zstandard``, ``blake3``, ``hashlib`` and the disk's calls
release the GIL, so the pool keeps every core busy, and with two threads
more than cores the disk has work while ranges decode. Whatever the image's
size, at most one range per thread, and two more, are in flight (each at
most 16 MiB, compressed), and each thread holds a buffer of 16 MiB for the
range it decodes and one for a frame that came in several chunks, touched
only as far as the longest range or frame it had.

Fresh memory is what costs most after decoding and hashing: on a VM each page
faulted in costs as much as copying a dozen. So nothing is copied that need
not be: a range travels as views of the download's chunks (a frame in
several chunks is copied once, into the thread's input buffer, and decoded in
one pass), is decoded into the thread's page-aligned buffer, written from it
and read back into it; each thread keeps its buffers and decompressor, and
the C allocator is told to keep the chunks' memory for the next ones.

Contract: :func:`land` returns None when every range is on the disk and
matches the map — its BLAKE3 when the map has one and this agent has the
``blake3`` module, else (and on a BLAKE3 mismatch) its SHA-256, the hash of
record — every other byte of the image reads as zero and the disk is
fsynced; else what differs, as a sentence. A stream of other ranges
than the map's raises :class:`~baas_agent.disks.DiskError` or
:class:`~baas_agent.compress.CompressionError`; a range the disk fails to write
or to read back (a bad sector: ``EIO``) raises ``DiskError`` saying which, where
and why ("reading back bytes S-E failed: Input/output error (errno 5)").
:func:`land_delta` does the same for a delta: the changed ranges alone are in
the stream and written, the runs that became zeros are zeroed, and both are
verified.

What is read back is the medium, not the page cache: where the target takes
``O_DIRECT``, whole-block ranges are written and read back with it (nothing
goes through the cache); otherwise each range is synced and dropped from the
cache before it is read (:func:`~baas_agent.disks.to_medium`), and dropped
again once hashed. Either way nothing the agent wrote stays cached.
"""

from __future__ import annotations

import collections
import errno
import functools
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
    allocate,
    drop_cached,
    is_block_device,
    open_in_place,
    to_medium,
    zero_run,
)
from diskimage import BLOCK, medium
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
# Threads beyond one per core: while some wait for the disk, the others decode and hash.
IO_THREADS = 2
FRAME_MAX = RANGE_MAX + (1 << 20)  # above zstd's bound for a range's frame
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
AHEAD = 2  # ranges downloaded ahead of the threads


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
        else:  # a file, all holes: the ranges' blocks allocated at once
            allocate(writer.fd, ((start, end) for start, end, _ in datamap.ranges))
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
    _keep_freed_memory()
    threads = workers + IO_THREADS
    landed = 0
    inflight: collections.deque[tuple[Future[str | None], int]] = collections.deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="land") as pool:
        try:
            for index, parts in enumerate(_pieces(chunks, encoding, datamap)):
                if index >= len(ranges):
                    raise DiskError("the data stream holds more than the image's ranges")
                fast = blake3s[index] if blake3s is not None else None
                task = pool.submit(_land_one, disk, ranges[index], parts, encoding, fast)
                del parts  # the task holds them: its chunks are freed as soon as it is done
                inflight.append((task, ranges[index][1]))
                while len(inflight) >= threads + AHEAD:  # bounded memory: a few ranges ahead
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


Parts = list[memoryview]


def _pieces(chunks: Iterable[bytes], encoding: str, datamap: DataMap) -> Iterator[Parts]:
    """The stream cut into one piece per range — a zstd frame, or raw bytes by length — each
    as views of the stream's chunks (nothing is copied)."""
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
    parts: Parts = []
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while wanted is not None and len(view) >= wanted:
            parts.append(view[:wanted])
            view = view[wanted:]
            yield parts
            parts = []
            wanted = next(lengths, None)
        if len(view):
            if wanted is None:
                raise DiskError("the data stream holds more than the image's ranges")
            parts.append(view)
            wanted -= len(view)
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
        return self.direct is not None and start % BLOCK == 0 and (end - start) % BLOCK == 0


def _land_one(
    disk: _Disk, item: tuple[int, int, str], parts: Parts, encoding: str, fast: str | None
) -> str | None:
    """Decode one range, write it at its offset, read it back from the disk and check it.

    The range is decoded into this thread's buffer (page-aligned, as ``O_DIRECT``
    wants), written from it, and read back from the medium into it, in one call
    each: the bytes hashed are the bytes the disk returned, which overwrote every
    byte of what was written. The read-back is hashed by BLAKE3 when ``fast`` (the
    map's BLAKE3 of the range) is given, else by SHA-256; a BLAKE3 mismatch is
    decided by the map's SHA-256 of the bytes read back, the hash of record.
    """
    start, end, digest = item
    length = end - start
    buffer = _buffer()
    got = _decode_into(parts, encoding, buffer[: length + 1], start, end)
    del parts
    if got != length:
        return f"bytes {start}-{end} came as {got} bytes"
    data = buffer[:length]
    try:
        direct = _write(disk, data, start)
    except OSError as exc:  # a failing disk: say what failed where, in plain words
        raise _failed("writing", start, end, exc) from exc
    try:
        return _read_back(disk, direct, data, start, end, digest, fast)
    except OSError as exc:
        raise _failed("reading back", start, end, exc) from exc


def _failed(what: str, start: int, end: int, exc: OSError) -> DiskError:
    return DiskError(medium.failed(what, start, end, exc))


def _write(disk: _Disk, data: memoryview, start: int) -> tuple[int, int] | None:
    """Write ``data`` at ``start``: with ``O_DIRECT`` where the range and the disk allow
    (the descriptors returned), else through the cache, synced and dropped from it."""
    direct = disk.direct if disk.can_go_direct(start, start + len(data)) else None
    if direct is not None:
        try:
            _pwrite_all(direct[0], data, start)  # on the medium when it returns
            return direct
        except OSError as exc:
            disk.refused(exc)
    _pwrite_all(disk.fd, data, start)
    to_medium(disk.fd, start, len(data))  # the read-back below reads the disk
    return None


def _read_back(
    disk: _Disk,
    direct: tuple[int, int] | None,
    data: memoryview,
    start: int,
    end: int,
    digest: str,
    fast: str | None,
) -> str | None:
    """Read ``[start, end)`` back from the medium into ``data`` and check it."""
    if direct is not None:
        try:
            _read_into(direct[1], data, start)
            return _verdict(data, start, end, digest, fast)
        except OSError as exc:
            disk.refused(exc)  # then read through the cache, which O_DIRECT left empty
    try:
        _read_into(disk.read_fd, data, start)
    finally:
        os.posix_fadvise(disk.read_fd, start, end - start, os.POSIX_FADV_DONTNEED)
    return _verdict(data, start, end, digest, fast)


def _verdict(data: memoryview, start: int, end: int, digest: str, fast: str | None) -> str | None:
    """None when ``data`` (what the disk returned for ``[start, end)``) is the map's range."""
    if fast is not None and blake3.blake3(data).hexdigest() == fast:
        return None
    if hashlib.sha256(data).hexdigest() == digest:
        return None
    return f"bytes {start}-{end} differ from the image (SHA-256 mismatch)"


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the bytes of ``fd`` from ``offset``: one call, unless it comes short."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise DiskError(
                f"the disk ended at byte {offset + done}, "
                f"inside bytes {offset}-{offset + len(view)}"
            )
        done += got


def _decode_into(parts: Parts, encoding: str, into: memoryview, start: int, end: int) -> int:
    """Decode ``parts`` into ``into``; the bytes it made (up to ``len(into)``: one more
    than the range's length tells a range that came too long)."""
    if encoding != "zstd":
        got = 0
        for part in parts:
            take = min(len(part), len(into) - got)
            into[got : got + take] = part[:take]
            got += len(part)
        return got
    frame = parts[0] if len(parts) == 1 else _joined(parts)
    try:
        # The whole frame at once: zstd then decodes it in one pass straight into ``into``
        # (streamed in pieces, it would decode into its window and copy out of it).
        reader = _decompressor().stream_reader(frame, read_size=len(frame))
        got = 0
        while got < len(into) and (count := reader.readinto(into[got:])):
            got += count
        return got
    except zstandard.ZstdError as exc:
        raise CompressionError(f"corrupt zstd frame for bytes {start}-{end}: {exc}") from exc


_local = threading.local()


@functools.cache
def _keep_freed_memory() -> None:
    """Have the C allocator keep the memory the stream's chunks are freed to, for the next.

    The download hands over each 1 MiB chunk in a new ``bytes``; a chunk lives until the
    range it holds is landed, so they are freed out of order, and glibc gives the top of
    its heap back to the system as soon as 2 MiB of it are free: the next chunks fault
    the same pages in again. Flashing a 566 MiB image that way faulted 200 MiB: about
    0.1 s of CPU on a VM. With a high trim threshold (and chunks never put in a mapping
    of their own) they reuse the same few megabytes, held until the agent exits.
    Without glibc (musl), nothing is changed.
    """
    import ctypes  # here, not at start-up

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # pragma: no cover - not glibc
        return
    mallopt(M_TRIM_THRESHOLD, 256 << 20)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)


def _buffer() -> memoryview:
    """This thread's buffer for a range and one more byte: page-aligned (as ``O_DIRECT``
    wants) and reused, so no range faults in fresh pages (on a VM a fault costs as much as
    copying a dozen pages). Its pages are touched only as far as the longest range yet."""
    view: memoryview | None = getattr(_local, "buffer", None)
    if view is None:
        view = _local.buffer = memoryview(mmap.mmap(-1, RANGE_MAX + BLOCK))
    return view


def _joined(parts: Parts) -> memoryview | bytes:
    """A frame that came in several chunks, copied into this thread's input buffer (reused,
    touched only as far as the longest frame yet): copying the compressed bytes costs less
    than decoding in pieces. A frame longer than any zstd makes of a range is joined anew."""
    size = sum(len(part) for part in parts)
    if size > FRAME_MAX:
        return b"".join(parts)
    view: memoryview | None = getattr(_local, "joined", None)
    if view is None:
        view = _local.joined = memoryview(mmap.mmap(-1, FRAME_MAX))
    at = 0
    for part in parts:
        view[at : at + len(part)] = part
        at += len(part)
    return view[:size]


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: its window and buffers are allocated once, not per range."""
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found
