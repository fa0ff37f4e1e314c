"""What of a file the page cache holds now, asked apart from the code under test."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from pathlib import Path


def resident(path: Path, start: int = 0, end: int | None = None) -> int:
    """Pages of ``path`` (of its bytes ``start`` to ``end``) in the page cache now (mincore
    on a private mapping of it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = ctypes.create_string_buffer(pages)
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mem:
        anchor = ctypes.c_char.from_buffer(mem)
        try:
            assert libc.mincore(ctypes.addressof(anchor), size, vector) == 0, ctypes.get_errno()
        finally:
            del anchor
    first, last = start // mmap.PAGESIZE, pages if end is None else -(-end // mmap.PAGESIZE)
    return sum(byte & 1 for byte in vector.raw[first:last])
