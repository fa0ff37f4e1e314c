"""Reading a disk to check it: from the page cache where it holds the bytes, else from the
medium itself with ``O_DIRECT``.

A disk the agent checks has just been booted into: nothing of it is cached, and a
buffered read makes the kernel read it into the page cache and copy it out again.
Read with ``O_DIRECT`` into the caller's page-aligned buffer, the bytes come from
the device straight into that buffer: on the bench's 566 MiB, half the CPU (0.20
against 0.40-0.43 s on two threads) and 10-20 % less time, and the page cache is
left to the image that will run (``bench/README.md``, session 15). Where a range
*is* cached (the bench's warm rows; a disk written a moment ago by something
else), copying it out of the cache is what is fastest, and what the disk holds
is what the cache holds. So each piece is read from where it is:
:meth:`Disk.cached` asks the kernel, with ``mincore`` on a mapping of the disk,
whether the piece's first and last pages are in the cache; no byte is read or
faulted in to find out.

The standard library has no ``mincore``, hence the ``ctypes`` calls below, made
only where the decision needs them.

Contract: :meth:`Disk.pieces` yields ``[start, end)`` of the disk in order, as
views of ``buffer`` (page-aligned, a multiple of 4 KiB long), each valid until
the next is asked for; a disk shorter than ``end`` raises
:class:`~diskimage.holes.ShortRead`, a read the disk fails its ``OSError``.
Where the disk refuses ``O_DIRECT`` (tmpfs before Linux 6.6, FUSE, ramfs; or
a direct read, ``EINVAL``: blocks larger than 4 KiB), and for a piece that does
not start on a 4 KiB boundary, it reads through the cache, as without this
module.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import threading
from collections.abc import Iterator
from typing import Any

from diskimage import BLOCK
from diskimage.holes import ShortRead, read_pieces

PAGE = mmap.PAGESIZE


def open_direct(path: os.PathLike[str] | str) -> int | None:
    """A read-only ``O_DIRECT`` descriptor of ``path``, or None where it is refused."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # tmpfs before 6.6, FUSE, ramfs
            return None
        raise


def failed(what: str, start: int, end: int, exc: OSError) -> str:
    """A disk's failure to read or write ``[start, end)``, in plain words: "reading back
    bytes S-E failed: Input/output error (errno 5)" (what the check and the landing say)."""
    return f"{what} bytes {start}-{end} failed: {exc.strerror or exc} (errno {exc.errno})"


class Disk:
    """A disk opened to be checked: ``fd`` (through the cache), ``direct`` (``O_DIRECT``,
    None where refused) and what tells whether the cache holds a piece of it.

    The whole disk is mapped once, read-only, for ``mincore`` to look at: no page of
    the mapping is ever touched (so none is read, and a bad sector cannot raise
    ``SIGBUS`` here), and it is unmapped once, at :meth:`close`. A mapping made
    and unmapped per piece, with every page asked about, cost 11-19 ms of CPU per
    check of the bench's 566 MiB; this way, 1.5-2.5 ms.
    """

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.direct = open_direct(path)
        except OSError:
            os.close(self.fd)
            raise
        self._size = os.lseek(self.fd, 0, os.SEEK_END)
        self._address: int | None = None
        if self.direct is not None and self._size and (libc := _libc()) is not None:
            address = libc.mmap(None, self._size, mmap.PROT_READ, mmap.MAP_SHARED, self.fd, 0)
            if address not in (None, _MAP_FAILED):
                self._address = address

    def cached(self, offset: int, length: int) -> bool:
        """Whether the page cache holds ``[offset, offset + length)``, judged by its first
        and last pages. Only a hint of where reading is faster: either way the bytes read
        are the disk's (a direct read writes back dirty cached pages of its range first).
        False where the kernel cannot tell: the medium is then read.
        """
        if self._address is None or offset + length > self._size or length <= 0:
            return False
        vector = _vector()
        for at in (offset, offset + length - 1):
            page = at - at % PAGE
            if _libc().mincore(self._address + page, 1, vector) != 0 or not vector.raw[0] & 1:
                return False
        return True

    def pieces(self, start: int, end: int, buffer: memoryview) -> Iterator[memoryview]:
        """``[start, end)`` of the disk, each piece from the page cache or from the medium."""
        position = start
        while position < end:
            want = min(len(buffer), end - position)
            if self.direct is None or position % BLOCK or self.cached(position, want):
                got = os.preadv(self.fd, [buffer[:want]], position)
            else:
                try:
                    whole = -(-want // BLOCK) * BLOCK
                    got = min(want, os.preadv(self.direct, [buffer[:whole]], position))
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    yield from read_pieces(self.fd, position, end, buffer)  # larger blocks
                    return
            if got == 0:
                raise ShortRead(errno.EIO, f"unexpected end of the disk at byte {position}")
            yield buffer[:got]
            position += got

    def close(self) -> None:
        if self._address is not None:
            _libc().munmap(self._address, self._size)
            self._address = None
        for fd in (self.fd, self.direct):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.direct = -1, None


_MAP_FAILED = (1 << 64) - 1  # (void *) -1, as ctypes returns it for a c_void_p


@functools.cache
def _libc() -> Any:
    """The C library's ``mmap``, ``munmap`` and ``mincore``, typed; None without them."""
    import ctypes  # here: only a disk that is checked needs it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        ]  # fmt: skip
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    return libc


def _vector() -> Any:
    """A buffer for ``mincore``'s answer about one page (this thread's, reused)."""
    import ctypes

    found = getattr(_local, "vector", None)
    if found is None:
        found = _local.vector = ctypes.create_string_buffer(1)
    return found


_local = threading.local()
