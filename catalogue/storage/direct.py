"""Writing a pending file's data past the page cache (``O_DIRECT``), where the filesystem
takes it.

Why not plain ``write()``: a version is written once and read later, yet every byte of a
buffered write is copied into the page cache first. That copy was the largest single cost
of storing an upload (a quarter to two fifths of the server's CPU in a profile of a push
of the bench disk), and on a virtual machine whose freed memory goes back to its host it
is also the most erratic one: the cache's pages are fresh memory each time, and each one
faulted in costs as much as copying a dozen (the same 566 MiB took 0.13 s to write into
warm pages and 0.6 to 1.9 s into cold ones). Written with ``O_DIRECT`` from a buffer the
process keeps, the bytes go from that buffer to the disk; the CPU copies them once, into
the buffer, which is reused and stays warm. No library does this staging for us: the
standard library's file objects have no ``O_DIRECT`` mode, and ``O_DIRECT`` wants what a
stream of uploaded pieces is not, block-aligned offsets, lengths and memory.

How: :class:`DirectWriter` gathers contiguous pieces in a page-aligned staging buffer and
writes it whole, at a block-aligned offset, when it is full or when the next piece does
not follow it (a hole). Whatever cannot be aligned — a piece that starts inside a block,
the partial block at the end of a run — goes through the ordinary descriptor; those
blocks are never also written directly, so the two paths never overlap. Nothing staged
is in the file until :meth:`DirectWriter.flush`, which :class:`PendingFile` calls before
it syncs, commits, shares ranges into the file or lets its path be read.

Where ``O_DIRECT`` is refused (ramfs, some FUSE filesystems: the ``open`` fails with
``EINVAL``), or a direct write is (a device whose blocks are larger than
:data:`~diskimage.BLOCK`), :func:`open_direct` returns None or the writer falls back, and
the file is written as before.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path

from diskimage import BLOCK

STAGE = 4 << 20  # bytes staged before a direct write: a few milliseconds of the disk
KEEP = 2  # staging buffers a process keeps for its next files (warm memory); more are unmapped

_spare: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def _take_buffer(size: int) -> mmap.mmap:
    with _spare_lock:
        for at, buffer in enumerate(_spare):
            if len(buffer) == size:
                return _spare.pop(at)
    return mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants its memory


def _give_back(buffer: mmap.mmap) -> None:
    with _spare_lock:
        if len(_spare) < KEEP:
            _spare.append(buffer)
            return
    buffer.close()


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """All of ``view`` at ``offset`` (``pwrite`` may write less than it is given)."""
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def open_direct(path: Path, fallback: int, stage: int = STAGE) -> DirectWriter | None:
    """A direct writer for ``path`` (already open as ``fallback``), staging ``stage`` bytes
    (a multiple of BLOCK), or None where the filesystem refuses ``O_DIRECT``."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise
    try:
        return DirectWriter(fd, fallback, stage)
    except BaseException:
        os.close(fd)
        raise


class DirectWriter:
    """Pieces written at increasing offsets, staged and written with ``O_DIRECT``.

    ``fallback`` is the file's ordinary descriptor, for what cannot be aligned. Not
    thread-safe: one writer thread at a time, as a pending file has.
    """

    def __init__(self, fd: int, fallback: int, stage: int = STAGE):
        if stage <= 0 or stage % BLOCK:
            raise ValueError(f"a stage of {stage} bytes is no whole number of blocks")
        self._fd, self._fallback, self._stage = fd, fallback, stage
        self._buffer: mmap.mmap | None = None
        self._start = 0  # file offset of the staged bytes (a multiple of BLOCK)
        self._length = 0  # bytes staged
        self.direct = True  # False once a direct write was refused: all buffered after

    @property
    def staged(self) -> int:
        """Bytes written but not yet in the file."""
        return self._length

    def write(self, data: memoryview, offset: int) -> None:
        """Put ``data`` at ``offset``, at or after everything written before."""
        if self._length and offset != self._start + self._length:
            self.flush()
        if not self.direct:
            pwrite_all(self._fallback, data, offset)
            return
        if not self._length:
            head = min(-offset % BLOCK, len(data))
            if head:  # starts inside a block: that block's part goes through the cache
                pwrite_all(self._fallback, data[:head], offset)
                data, offset = data[head:], offset + head
            self._start = offset
        if self._buffer is None:
            self._buffer = _take_buffer(self._stage)
        while data:
            take = min(len(data), self._stage - self._length)
            self._buffer[self._length : self._length + take] = data[:take]
            self._length += take
            data = data[take:]
            if self._length == self._stage:
                self.flush()
                self._start += self._stage

    def flush(self) -> None:
        """Write what is staged: whole blocks directly, a partial last block buffered."""
        if not self._length or self._buffer is None:
            return
        staged = memoryview(self._buffer)[: self._length]
        aligned = self._length // BLOCK * BLOCK if self.direct else 0
        try:
            if aligned:
                try:
                    pwrite_all(self._fd, staged[:aligned], self._start)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.direct = False  # larger blocks than ours: write as before
                    aligned = 0
            if aligned < self._length:
                pwrite_all(self._fallback, staged[aligned:], self._start + aligned)
        finally:
            staged.release()
            self._length = 0

    def close(self) -> None:
        """Drop what is staged (the caller flushed what it keeps) and the descriptor."""
        self._length = 0
        if self._buffer is not None:
            _give_back(self._buffer)
            self._buffer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
