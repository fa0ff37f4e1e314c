"""Blocks shared between files: reflinks, dedupe, and where a file's blocks are.

On a filesystem with reflinks (XFS made with ``reflink=1``, btrfs) two files
may hold the same physical blocks; a write to either then goes elsewhere
(copy on write), so sharing never lets one file change another. Three Linux
calls, made here with ``ioctl`` and no more than the standard library:

- :func:`clone_range` (``FICLONERANGE``): make a range of one file share the
  blocks of a range of another, for a file being written (nobody else sees it);
  where the filesystem cannot, the bytes are copied (``copy_file_range``, which
  the kernel does without user space, or read and write);
- :func:`dedupe_range` (``FIDEDUPERANGE``): the same for a file already in
  place, but the kernel first compares the bytes under lock and shares them
  only if they are equal, so a wrong guess, or a file changed meanwhile, costs
  nothing but the comparison;
- :func:`extents` (``FS_IOC_FIEMAP``): a file's extents with their physical
  addresses, from which :func:`held_bytes` counts the bytes a set of files
  holds on the disk, each shared block once.

Offsets and lengths given to the first two must sit on the filesystem's block
(4 KiB: :data:`diskimage.BLOCK`), but a range may end at the end of both files.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from diskimage import BLOCK

FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range)
FIDEDUPERANGE = 0xC0189436  # _IOWR(0x94, 54, struct file_dedupe_range)
FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_CLONE = struct.Struct("=qQQQ")  # src_fd, src_offset, src_length, dest_offset
_DEDUPE_HEAD = struct.Struct("=QQHHI")  # src_offset, src_length, dest_count, reserved, reserved
_DEDUPE_INFO = struct.Struct("=qQQiI")  # dest_fd, dest_offset, bytes_deduped, status, reserved
_FIEMAP_HEAD = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQI12x")  # logical, physical, length, reserved, reserved, flags
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2  # no physical address (yet): not counted as held
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_BATCH = 512  # extents asked for per call
DEDUPE_SAME, DEDUPE_DIFFERS = 0, 1
# The most one dedupe call is given: btrfs stops at 16 MiB (and says how much it did).
DEDUPE_MAX = 16 << 20
# Errors that mean "this filesystem (or this pair of files) cannot share blocks".
UNSHAREABLE = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF}
)


class ExtentsUnsupported(OSError):
    """The filesystem does not say where a file's blocks are (no FIEMAP: tmpfs, NFS…)."""


# --- Sharing ---------------------------------------------------------------------------


def _fits(
    offset: int, length: int, size_in: int, size_out: int, dest: int, *, dedupe: bool
) -> bool:
    """Whether the kernel takes this range: on blocks, or ending at the source's end (and
    the destination's, or past it for a clone)."""
    if offset % BLOCK or dest % BLOCK or length <= 0:
        return False
    if length % BLOCK == 0:
        return True
    end_out = dest + length == size_out if dedupe else dest + length >= size_out
    return offset + length == size_in and end_out


def clone_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> int:
    """Make ``dst[dst_offset:+length]`` hold ``src[src_offset:+length]``; the bytes shared.

    ``dst`` is a file open for writing that nobody else reads yet (a pending
    version). Its blocks come from ``src`` by reflink where the filesystem
    can; otherwise (ext4, tmpfs, unaligned offsets) the bytes are copied, and
    0 is returned. Raises OSError only for an error that a copy has too."""
    size_in = os.fstat(src).st_size
    size_out = os.fstat(dst).st_size
    if _fits(src_offset, length, size_in, size_out, dst_offset, dedupe=False):
        try:
            fcntl.ioctl(dst, FICLONERANGE, _CLONE.pack(src, src_offset, length, dst_offset))
            return length
        except OSError as exc:
            if exc.errno not in UNSHAREABLE:
                raise
    copy_range(src, src_offset, dst, dst_offset, length)
    return 0


def copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes in the kernel where it can (``copy_file_range``), else by hand."""
    done = 0
    while done < length:
        try:
            moved = os.copy_file_range(
                src, dst, length - done, src_offset + done, dst_offset + done
            )
        except OSError as exc:
            if exc.errno not in UNSHAREABLE:
                raise
            break
        if moved == 0:
            raise OSError(errno.EIO, f"{src_offset + done} is past the end of the source")
        done += moved
    while done < length:
        data = os.pread(src, min(length - done, 4 << 20), src_offset + done)
        if not data:
            raise OSError(errno.EIO, f"{src_offset + done} is past the end of the source")
        view = memoryview(data)
        while view:
            written = os.pwrite(dst, view, dst_offset + done)
            view = view[written:]
            done += written


def dedupe_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> int | None:
    """Let ``dst[dst_offset:+length]`` share ``src``'s blocks if the bytes are equal.

    The kernel compares the two ranges under lock; returns the bytes now
    shared (``length``, or 0 when they differ), or None when this filesystem
    or this range cannot share (nothing changed either way). ``dst`` may be
    open read-only if this process owns it. Never changes a byte of either."""
    size_in = os.fstat(src).st_size
    size_out = os.fstat(dst).st_size
    if not _fits(src_offset, length, size_in, size_out, dst_offset, dedupe=True):
        return None
    done = 0
    while done < length:
        step = min(length - done, DEDUPE_MAX)
        buffer = bytearray(
            _DEDUPE_HEAD.pack(src_offset + done, step, 1, 0, 0)
            + _DEDUPE_INFO.pack(dst, dst_offset + done, 0, 0, 0)
        )
        try:
            fcntl.ioctl(src, FIDEDUPERANGE, buffer)
        except OSError as exc:
            if exc.errno in UNSHAREABLE or exc.errno in (errno.EPERM, errno.EACCES):
                return None
            raise
        _fd, _offset, deduped, status, _ = _DEDUPE_INFO.unpack_from(buffer, _DEDUPE_HEAD.size)
        if status == DEDUPE_DIFFERS:
            return 0 if done == 0 else done
        if status < 0:
            if -status in UNSHAREABLE or -status in (errno.EPERM, errno.EACCES):
                return None
            raise OSError(-status, os.strerror(-status))
        if deduped <= 0:
            return done or None
        done += deduped
    return done


@dataclass(frozen=True)
class Candidate:
    """A range of a new file that may hold the same bytes as a range of an older one."""

    src: int  # offset in the older file
    dst: int  # offset in the new file
    length: int
    # "whole": expected equal as a whole (same SHA-256); "pieces": may be equal in parts,
    # anywhere (raw bytes at the same offset); "prefix": may be equal up to a first
    # difference, and not after it (a zstd frame of a range that changed).
    kind: str = "whole"


_BUFFER = bytearray(4 << 20)  # (its bytes are never used: reads only fill the page cache)
PIECE = 1 << 20  # a candidate that differs is tried again in pieces of this size…
MIN_PIECE = 64 << 10  # …and those that differ in these: smaller runs are not worth an extent


def dedupe_candidates(src: int, dst: int, candidates: Iterable[Candidate]) -> int:
    """Share every equal range of ``candidates`` (see :class:`Candidate`); the bytes shared.
    The kernel checks every byte; a range the filesystem will not share is left as it is."""
    return sum(_dedupe_one(src, dst, candidate) or 0 for candidate in candidates)


def _warm(fd: int, offset: int, length: int, buffer: memoryview) -> None:
    """Read ``[offset, offset + length)`` into the page cache, in large sequential reads:
    the kernel's comparison reads page by page without read-ahead (on a cold XFS, 25 MB/s
    against 300 MB/s here)."""
    end = offset + length
    while offset < end:
        got = os.preadv(fd, [buffer[: min(len(buffer), end - offset)]], offset)
        if got <= 0:
            return
        offset += got


def _dedupe_one(src: int, dst: int, candidate: Candidate) -> int | None:
    buffer = memoryview(_BUFFER)
    _warm(src, candidate.src, candidate.length, buffer)
    _warm(dst, candidate.dst, candidate.length, buffer)
    got = dedupe_range(src, candidate.src, dst, candidate.dst, candidate.length)
    if got is None or got == candidate.length or candidate.kind == "whole":
        return got
    # The first ``got`` bytes were equal (whole 16 MiB steps); the rest, piece by piece.
    size = PIECE if candidate.length - got > PIECE else MIN_PIECE
    return got + _in_pieces(src, dst, candidate, got, size)


def _in_pieces(src: int, dst: int, candidate: Candidate, start: int, size: int) -> int:
    shared = 0
    for offset in range(start, candidate.length, size):
        length = min(size, candidate.length - offset)
        got = dedupe_range(src, candidate.src + offset, dst, candidate.dst + offset, length)
        if got is None:
            continue  # e.g. an unaligned tail: left as it is
        shared += got
        if got == length:
            continue
        if size > MIN_PIECE:
            piece = Candidate(
                candidate.src + offset, candidate.dst + offset, length, candidate.kind
            )
            shared += _in_pieces(src, dst, piece, got, MIN_PIECE)
        if candidate.kind == "prefix":
            break  # what follows a difference in a zstd frame is shifted: never equal
    return shared


# --- Blocks held for nothing -----------------------------------------------------------------

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def _fallocate():
    function = ctypes.CDLL(None, use_errno=True).fallocate
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return function


def release_holes(fd: int) -> None:
    """Give back blocks the filesystem holds where the file reads as a hole (XFS keeps
    speculative preallocation, as unwritten extents, in the holes a sparse writer seeked
    over: a 48 MiB file with 20 MiB of data held 32 MiB). Only ranges ``SEEK_HOLE`` calls
    holes are punched: what reads as zeros and has no data cached; no byte changes."""
    size = os.fstat(fd).st_size
    fallocate = _fallocate()
    position = 0
    while position < size:
        try:
            hole = os.lseek(fd, position, os.SEEK_HOLE)
        except OSError:
            return  # no SEEK_HOLE here
        if hole >= size:
            return
        try:
            data = os.lseek(fd, hole, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                return
            data = size
        if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, hole, data - hole) != 0:
            return  # (no hole punching here: the blocks stay, as they would have)
        position = data


# --- Where blocks are ----------------------------------------------------------------------


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    shared: bool


def extents(fd: int) -> Iterator[Extent]:
    """The file's extents in order (FIEMAP, synced first); ExtentsUnsupported without it."""
    start = 0
    while True:
        rest = (1 << 64) - 1 - start
        head = _FIEMAP_HEAD.pack(start, rest, FIEMAP_FLAG_SYNC, 0, _FIEMAP_BATCH, 0)
        buffer = bytearray(head + bytes(_FIEMAP_EXTENT.size * _FIEMAP_BATCH))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buffer)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise ExtentsUnsupported(exc.errno, "no FIEMAP on this filesystem") from exc
            raise
        mapped = _FIEMAP_HEAD.unpack_from(buffer)[3]
        if mapped == 0:
            return
        last = False
        for index in range(mapped):
            logical, physical, length, _r1, _r2, flags = _FIEMAP_EXTENT.unpack_from(
                buffer, _FIEMAP_HEAD.size + index * _FIEMAP_EXTENT.size
            )
            if not flags & FIEMAP_EXTENT_UNKNOWN:
                yield Extent(logical, physical, length, bool(flags & FIEMAP_EXTENT_SHARED))
            start = logical + length
            last = bool(flags & FIEMAP_EXTENT_LAST)
        if last:
            return


def shared_bytes(fd: int) -> int:
    """Bytes of the file whose blocks another file (or another place of it) holds too."""
    return sum(extent.length for extent in extents(fd) if extent.shared)


def held_bytes(fds: Iterable[int]) -> int:
    """Bytes the files hold on the disk together, each physical block counted once (the
    union of their extents' physical ranges). ExtentsUnsupported without FIEMAP."""
    spans = sorted(
        (extent.physical, extent.physical + extent.length) for fd in fds for extent in extents(fd)
    )
    held, reach = 0, 0
    for begin, end in spans:
        if end <= reach:
            continue
        held += end - max(begin, reach)
        reach = end
    return held


def can_share(directory: str) -> bool:
    """Whether files made in ``directory`` can share blocks (a reflink of a scratch file)."""
    flags = os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0)
    try:
        first = os.open(directory, flags, 0o600)
    except OSError:
        return False
    try:
        second = os.open(directory, flags, 0o600)
    except OSError:
        os.close(first)
        return False
    try:
        os.pwrite(first, b"\x01" * BLOCK, 0)
        fcntl.ioctl(second, FICLONERANGE, _CLONE.pack(first, 0, BLOCK, 0))
        return True
    except OSError:
        return False
    finally:
        os.close(first)
        os.close(second)


__all__ = [
    "Candidate",
    "Extent",
    "ExtentsUnsupported",
    "can_share",
    "clone_range",
    "copy_range",
    "dedupe_candidates",
    "dedupe_range",
    "extents",
    "held_bytes",
    "shared_bytes",
]
