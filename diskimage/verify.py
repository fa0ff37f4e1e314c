"""Checking a disk against a version's data map.

A disk holds the version exactly when each range of its map
(:mod:`diskimage.datamap`) hashes right and everything else reads as zeros —
which is what :func:`mismatch` checks, reading only the data of a sparse
file, and hashing ranges on several threads at once (``hashlib`` and
``blake3`` release the GIL), where the whole-image SHA-256 would be one
sequential pass over the zeros as well. What the page cache does not hold
is read from the medium itself (:mod:`diskimage.medium`).

Contract: :func:`mismatch` returns None when the target's first ``size``
bytes are the image, else the first difference it found, as a sentence.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from diskimage import READ_CHUNK, medium
from diskimage.datamap import DataMap
from diskimage.holes import data_extents, is_zeros

MAX_WORKERS = 8

Progress = Callable[[int], None]


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def mismatch(
    path: Path,
    datamap: DataMap,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    sparse: bool = True,
    fast: bool = False,
) -> str | None:
    """None if ``path`` starts with exactly the mapped image, else what differs.

    Every range is hashed and compared — by BLAKE3 when ``fast`` and the map
    and this agent allow it, else by SHA-256; every gap is checked to be
    zeros — on a file (``sparse``), only where SEEK_DATA finds data, holes
    being zeros. ``progress`` gets the bytes checked so far.
    """
    try:
        available = _size(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    if available < datamap.size:
        return f"{path} holds {available} bytes, fewer than {datamap.size}"
    with Verifier(path, datamap, workers=workers, sparse=sparse) as verifier:
        for index in range(len(datamap.ranges)):
            verifier.check_range(index, fast=fast)
        verifier.check_gaps()
        return verifier.result(progress)


def _size(path: Path) -> int:
    """A file's length or a device's capacity."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class Verifier:
    """Checks a disk against a map on a pool of threads, part by part, as parts are ready.

    A writer calls :meth:`check_range` as each range is on the disk, so hashing
    runs beside the download and decompression; :meth:`result` waits for
    everything asked and returns the first difference found, or None.
    """

    def __init__(
        self, path: Path, datamap: DataMap, *, workers: int | None = None, sparse: bool = True
    ) -> None:
        self.datamap = datamap
        self.sparse = sparse
        self.disk = medium.Disk(path)  # read from the cache, or where it misses, the medium
        self.fd = self.disk.fd
        self.pool = ThreadPoolExecutor(
            max_workers=workers or default_workers(), thread_name_prefix="verify"
        )
        self.pending: dict[Future[str | None], _Check] = {}

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_range(self, index: int, *, fast: bool = False) -> None:
        start, end, digest = self.datamap.ranges[index]
        if fast and self.datamap.can_check_fast():
            assert self.datamap.blake3 is not None
            check = _RangeCheck(self, start, end, self.datamap.blake3[index], "BLAKE3")
        else:
            check = _RangeCheck(self, start, end, digest, "SHA-256")
        self._submit(check)

    def check_gaps(self) -> None:
        for start, end in self.datamap.gaps():
            self.check_zeros(start, end)

    def check_zeros(self, start: int, end: int) -> None:
        """Check that ``[start, end)`` reads as zeros (a gap, or a part of one)."""
        self._submit(_ZerosCheck(self, start, end))

    def _submit(self, check: _Check) -> None:
        self.pending[self.pool.submit(check)] = check

    def result(self, progress: Progress | None = None) -> str | None:
        done = 0
        while self.pending:
            finished, _ = wait(self.pending, return_when=FIRST_EXCEPTION, timeout=0.5)
            for future in finished:
                check = self.pending.pop(future)
                try:
                    reason = future.result()
                except OSError as exc:  # a failing disk: what failed where, in plain words
                    reason = medium.failed("reading", check.offset, check.end, exc)
                if reason is not None:
                    return reason
                done += check.end - check.offset
            if progress is not None and finished:
                progress(done)
        return None

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)
        if self.fd >= 0:
            self.disk.close()
            self.fd = -1


_buffers = threading.local()


def read_buffer() -> memoryview:
    """This thread's read buffer: an anonymous mapping, whose pages the kernel fills as the
    first read lands in them. A ``bytearray`` is zeroed by the process first: that cost a
    fresh agent's check of an unchanged disk ~25 ms of CPU in 566 MiB (``bench/flash.py``)."""
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(mmap.mmap(-1, READ_CHUNK))
    return view


class _Check:
    """One part of the image to check: ``__call__`` returns None or what differs."""

    def __init__(self, verifier: Verifier, start: int, end: int) -> None:
        self.fd, self.disk = verifier.fd, verifier.disk
        self.offset, self.end = start, end

    def _read(self, start: int, end: int) -> Iterator[memoryview]:
        return self.disk.pieces(start, end, read_buffer())

    def __call__(self) -> str | None:
        raise NotImplementedError


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...
    def hexdigest(self) -> str: ...


def _hasher(algorithm: str) -> _Hasher:
    if algorithm == "BLAKE3":
        import blake3  # a map carries BLAKE3 ranges only where blake3 is installed

        return blake3.blake3()
    return hashlib.sha256()


class _RangeCheck(_Check):
    """Hash ``[start, end)`` and compare it with the map's SHA-256."""

    def __init__(
        self, verifier: Verifier, start: int, end: int, digest: str, algorithm: str
    ) -> None:
        super().__init__(verifier, start, end)
        self.digest = digest
        self.algorithm = algorithm

    def __call__(self) -> str | None:
        hasher = _hasher(self.algorithm)
        for chunk in self._read(self.offset, self.end):
            hasher.update(chunk)
        if hasher.hexdigest() != self.digest:
            return (
                f"bytes {self.offset}-{self.end} differ from the image ({self.algorithm} mismatch)"
            )
        return None


class _ZerosCheck(_Check):
    """Check that ``[start, end)`` reads as zeros; on a file, only data is read."""

    def __init__(self, verifier: Verifier, start: int, end: int) -> None:
        super().__init__(verifier, start, end)
        self.sparse = verifier.sparse

    def __call__(self) -> str | None:
        runs = (
            data_extents(self.fd, self.offset, self.end)
            if self.sparse
            else [(self.offset, self.end)]
        )
        for start, end in runs:
            for chunk in self._read(start, end):
                if not is_zeros(chunk):
                    return f"bytes {start}-{end} should be zeros and are not"
        return None
