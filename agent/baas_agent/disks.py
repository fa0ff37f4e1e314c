"""Disks: where an instruction's device path goes, a sparse-aware writer, a fast reader.

Contracts:

- :class:`DiskMap` maps the server's device paths (``/dev/sda``) to targets:
  ``--disk /dev/sda=/path/to/file``. Without any mapping a device path is its
  own target; with mappings, only mapped devices are touched (a test run must
  never write to the host's real ``/dev/sda``).
- :class:`SparseWriter` lays an image of ``size`` bytes onto a target. All-zero
  4 KiB blocks are never written as zeros: a regular file becomes exactly
  ``size`` bytes of holes first and only data blocks are written; on a block
  device zero ranges are zeroed by the device itself (see :class:`Zeroer`).
  ``close()`` fsyncs.
- :func:`allocate` gives a regular file the blocks of the runs about to be
  written, before they are (never by writing zeros; false where it cannot).
- :func:`read_target` streams the first ``size`` bytes of a target without
  reading holes from disk (SEEK_DATA/SEEK_HOLE on files; 4 MiB sequential
  reads on block devices); :func:`hash_target` is its SHA-256.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from diskimage import BLOCK, CHUNK, READ_CHUNK, ZEROS
from diskimage.holes import (
    UNSUPPORTED,
    ShortRead,
    data_extents,
    data_runs,
    read_pieces,
    zero_pieces,
)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range, the device's fastest way

Progress = Callable[[int], None]


class DiskError(Exception):
    """A target cannot be used: unmapped, missing, too small, short, unreadable."""


# -- the device map ------------------------------------------------------------


class DiskMap:
    """The server's device paths → local targets (files or block devices)."""

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self.mapping = dict(mapping or {})

    @classmethod
    def parse(cls, specs: Iterable[str]) -> DiskMap:
        """From ``DEVICE=TARGET`` strings (``--disk /dev/sda=/tmp/a.img``)."""
        mapping: dict[str, str] = {}
        for spec in specs:
            device, sep, target = spec.partition("=")
            if not sep or not device or not target:
                raise ValueError(f"a disk mapping is DEVICE=TARGET, not {spec!r}")
            mapping[device] = target
        return cls(mapping)

    def target(self, device: str) -> Path:
        """Where ``device`` is. Raises DiskError for an unmapped device when mapping."""
        if self.mapping:
            if device not in self.mapping:
                raise DiskError(f"{device} is not one of the mapped disks {sorted(self.mapping)}")
            return Path(self.mapping[device])
        if not device.startswith("/"):
            raise DiskError(f"a disk must be an absolute path, not {device!r}")
        return Path(device)


def is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def target_size(path: Path) -> int | None:
    """Bytes on the target (a file's length, a device's capacity); None if missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# -- writing -------------------------------------------------------------------------


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class Zeroer:
    """Zeroes byte ranges of a block device without sending zeros, if it can.

    In order: ``fallocate(PUNCH_HOLE|KEEP_SIZE)`` (Linux ≥ 4.9: the device
    unmaps or write-zeroes the range, reads return zeros, never falls back to
    writing), then the ``BLKZEROOUT`` ioctl (the kernel zeroes the range the
    device's fastest way), and only when the device supports neither, plain
    writes of zeros. ``BLKDISCARD`` is not used: after it, reads need not
    return zeros. The first method that works is kept.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.methods: list[Callable[[int, int], None]] = [
            self._punch_hole,
            self._zeroout,
            self._write_zeros,
        ]

    @property
    def method(self) -> str:
        return self.methods[0].__name__.lstrip("_")

    def zero(self, offset: int, length: int) -> None:
        while True:
            try:
                self.methods[0](offset, length)
                return
            except OSError as exc:
                if exc.errno not in UNSUPPORTED or len(self.methods) == 1:
                    raise
                self.methods.pop(0)

    def _punch_hole(self, offset: int, length: int) -> None:
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if _libc_fallocate(self.fd, mode, offset, length) != 0:
            import ctypes  # loaded by _fallocate already: not at start-up, which it slows

            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def _zeroout(self, offset: int, length: int) -> None:
        fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))

    def _write_zeros(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            size = min(CHUNK, end - offset)
            _pwrite_all(self.fd, ZEROS[:size], offset)
            offset += size


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int]:
    import ctypes  # here, not at start-up: a re-flash of an unchanged disk never needs it

    libc = ctypes.CDLL(None, use_errno=True)  # this process: libc is in it already
    function = libc.fallocate
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def _libc_fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    return _fallocate()(fd, mode, offset, length)


def allocate(fd: int, runs: Iterable[tuple[int, int]]) -> bool:
    """Allocate the blocks of a regular file's ``[start, end)`` runs before they are written.

    Writes that bypass the page cache (``O_DIRECT``) into a hole make ext4 allocate
    blocks inside each write, one write at a time (holding the file's lock); allocated
    beforehand in one pass (``fallocate``, mode 0: unwritten extents, read as zeros),
    the writes only fill them, several at once: 25 % less time writing an image's 259
    ranges here. Nothing is written, and the gaps stay holes. False (and nothing
    done) where the file system cannot (it is an optimisation, never emulated by
    writing zeros as ``posix_fallocate`` would).
    """
    for start, end in runs:
        if _libc_fallocate(fd, 0, start, end - start) != 0:
            import ctypes  # loaded by _fallocate already

            code = ctypes.get_errno()
            if code in UNSUPPORTED:
                return False
            raise OSError(code, os.strerror(code))
    return True


SYNC_FILE_RANGE_ALL = 0x1 | 0x2 | 0x4  # WAIT_BEFORE | WRITE | WAIT_AFTER


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # this process: libc is in it already
    function = getattr(libc, "sync_file_range", None)
    if function is None:  # pragma: no cover - every Linux libc has it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def to_medium(fd: int, offset: int, length: int) -> None:
    """Put ``[offset, offset + length)`` on the medium and drop it from the page cache.

    What is read there next comes from the disk, not from memory: the
    read-back of a write checks the medium. ``sync_file_range`` writes the
    range's dirty pages and waits for them (only that range, so threads
    landing other ranges do not wait for each other), ``fdatasync`` where it
    is refused; then ``POSIX_FADV_DONTNEED`` drops the now clean pages, on a
    file as on a block device (whose pages are the device's own cache).
    """
    function = _sync_file_range()
    if function is None or function(fd, offset, length, SYNC_FILE_RANGE_ALL) != 0:
        os.fdatasync(fd)
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def drop_cached(path: Path) -> None:
    """Sync ``path`` and drop all of its pages from the cache (see :func:`to_medium`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def open_in_place(path: Path, size: int) -> int:
    """A write descriptor on a target that keeps what it holds (a delta is written into it).

    A block device is opened exclusively and must hold ``size`` bytes; a file
    must be exactly ``size`` bytes long.
    """
    if is_block_device(path):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_EXCL)
    elif str(path).startswith("/dev/"):
        raise DiskError(f"{path} is not a block device")
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    available = os.lseek(fd, 0, os.SEEK_END)
    if available < size or (available != size and not is_block_device(path)):
        os.close(fd)
        raise DiskError(f"{path} holds {available} bytes, the image {size}")
    return fd


def zero_run(zeroer: Zeroer, start: int, end: int) -> None:
    """Zero ``[start, end)`` the device's (or file system's) way; a short tail by writing."""
    aligned = start + (end - start) // BLOCK * BLOCK
    if aligned > start:
        zeroer.zero(start, aligned - start)
    if end > aligned:
        _pwrite_all(zeroer.fd, ZEROS[: end - aligned], aligned)


class SparseWriter:
    """Writes an image of exactly ``size`` bytes onto ``path``, zero blocks as holes.

    Feed it the raw image in order with :meth:`write` (every chunk but the last
    a multiple of 4 KiB), then :meth:`close`, which checks that ``size`` bytes
    came and fsyncs. A regular file target (created if missing) is truncated to
    nothing and then to ``size``; a block device must hold at least ``size``
    bytes and is opened exclusively (the kernel refuses a mounted one).
    ``block_device`` overrides the detection (tests use it on files).
    """

    def __init__(self, path: Path, size: int, *, block_device: bool | None = None) -> None:
        self.path = path
        self.size = size
        self.block_device = is_block_device(path) if block_device is None else block_device
        self.position = 0
        self._zero_from: int | None = None  # a pending zero range (block devices)
        self.fd = self._open()
        self.zeroer = Zeroer(self.fd) if self.block_device else None

    def _open(self) -> int:
        if self.block_device:
            flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_EXCL if is_block_device(self.path) else 0)
            fd = os.open(self.path, flags)
            capacity = os.lseek(fd, 0, os.SEEK_END)
            if capacity < self.size:
                os.close(fd)
                raise DiskError(f"{self.path} holds {capacity} bytes, the image {self.size}")
            return fd
        if str(self.path).startswith("/dev/"):
            raise DiskError(f"{self.path} is not a block device")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.ftruncate(fd, 0)  # drop every old block: what is not written stays a hole
        os.ftruncate(fd, self.size)
        return fd

    def __enter__(self) -> SparseWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, chunk: bytes) -> None:
        """Lay ``chunk`` at the current position: data blocks written, zero blocks not."""
        if self.position % BLOCK:
            raise ValueError("only the last chunk may end off a 4 KiB boundary")
        if self.position + len(chunk) > self.size:
            raise DiskError(f"the image is longer than its size, {self.size} bytes")
        view = memoryview(chunk)
        done = 0
        for start, end in data_runs(chunk):
            self._zeros(self.position + done, start - done)
            self._flush_zeros(self.position + start)
            _pwrite_all(self.fd, view[start:end], self.position + start)
            done = end
        self._zeros(self.position + done, len(chunk) - done)
        self.position += len(chunk)

    def _zeros(self, offset: int, length: int) -> None:
        # Files are holes already; on a device, contiguous zero runs merge into one call.
        if length and self.zeroer is not None and self._zero_from is None:
            self._zero_from = offset

    def _flush_zeros(self, end: int) -> None:
        """Zero the pending range up to ``end`` (where data starts, or the image ends)."""
        if self._zero_from is None or self.zeroer is None:
            return
        start, self._zero_from = self._zero_from, None
        aligned = start + (end - start) // BLOCK * BLOCK
        if aligned > start:
            self.zeroer.zero(start, aligned - start)
        if end > aligned:  # a short final block: a few bytes, just write them
            _pwrite_all(self.fd, ZEROS[: end - aligned], aligned)

    def close(self) -> None:
        """Finish: the last zero range, a length check, fsync. Raises DiskError if short."""
        try:
            self._flush_zeros(self.position)
            if self.position != self.size:
                raise DiskError(f"the image ended at byte {self.position} of {self.size}")
            os.fsync(self.fd)
        finally:
            self.__exit__()


# -- reading -------------------------------------------------------------------------


def read_target(
    path: Path, size: int, *, block_device: bool | None = None
) -> Iterator[bytes | memoryview]:
    """The first ``size`` bytes of ``path``, in chunks of at most 4 MiB.

    Holes of a regular file are not read: they come as views of a shared zero
    buffer, 1 MiB at a time. Chunks may be views of a reused buffer: use each
    before asking for the next. Raises DiskError if the target is shorter.
    """
    if block_device is None:
        block_device = is_block_device(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise DiskError(f"{path} does not exist") from exc
    try:
        available = os.lseek(fd, 0, os.SEEK_END)
        if available < size:
            raise DiskError(f"{path} holds {available} bytes, fewer than {size}")
        if block_device:
            yield from _read_range(fd, 0, size)
        else:
            yield from _read_sparse(fd, size)
    finally:
        os.close(fd)


def _read_sparse(fd: int, size: int) -> Iterator[bytes | memoryview]:
    position = 0
    for start, end in data_extents(fd, 0, size):
        yield from zero_pieces(start - position)
        yield from _read_range(fd, start, end)
        position = end
    yield from zero_pieces(size - position)


def _read_range(fd: int, start: int, end: int) -> Iterator[memoryview]:
    try:
        yield from read_pieces(fd, start, end, memoryview(bytearray(READ_CHUNK)))
    except ShortRead as exc:
        raise DiskError(f"the target is shorter than the image: {exc.strerror}") from exc


def hash_target(
    path: Path, size: int, *, progress: Progress | None = None, block_device: bool | None = None
) -> str:
    """Hex SHA-256 of the first ``size`` bytes of ``path`` (holes hashed as zeros)."""
    digest = hashlib.sha256()
    done = 0
    for chunk in read_target(path, size, block_device=block_device):
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return digest.hexdigest()


class RangeWriter(SparseWriter):
    """Lays an image onto a target from the bytes of its data ranges alone, in order.

    ``ranges`` are the image's ``[start, end)`` data ranges (its data map);
    every other byte of the image is zero. :meth:`write` takes the next bytes
    of the ranges concatenated, in pieces of any size; nothing is scanned for
    zeros. A regular file is all holes but the ranges; on a block device the
    gaps are zeroed by the device (see :class:`Zeroer`). ``on_range(index)``
    is called as each range is complete. ``close()`` checks that exactly the
    ranges' bytes came, and fsyncs.
    """

    def __init__(
        self,
        path: Path,
        size: int,
        ranges: list[tuple[int, int]],
        *,
        block_device: bool | None = None,
        on_range: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(path, size, block_device=block_device)
        self.ranges = ranges
        self.on_range = on_range
        self.index = 0
        self.received = 0  # bytes of the ranges so far
        self.position = ranges[0][0] if ranges else size
        self._gap(0, self.position)

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        while view:
            if self.index >= len(self.ranges):
                raise DiskError("more data came than the image's ranges hold")
            end = self.ranges[self.index][1]
            take = min(len(view), end - self.position)
            _pwrite_all(self.fd, view[:take], self.position)
            view = view[take:]
            self.position += take
            self.received += take
            if self.position == end:
                self._range_done()

    def _range_done(self) -> None:
        if self.on_range is not None:
            self.on_range(self.index)
        self.index += 1
        end = self.ranges[self.index - 1][1]
        self.position = self.ranges[self.index][0] if self.index < len(self.ranges) else self.size
        self._gap(end, self.position)

    def _gap(self, start: int, end: int) -> None:
        """Zeros from ``start`` to ``end``: holes already on a file; zeroed on a device."""
        if end > start and self.zeroer is not None:
            self._zero_from = start
            self._flush_zeros(end)

    def close(self) -> None:
        try:
            if self.index != len(self.ranges):
                raise DiskError(
                    f"the data ended after {self.received} bytes, in range {self.index + 1} "
                    f"of {len(self.ranges)}"
                )
            os.fsync(self.fd)
        finally:
            self.__exit__()
