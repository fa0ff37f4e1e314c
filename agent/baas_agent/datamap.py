"""A version's data map, and checking a disk against it.

The server sends, for each version, the ranges of the raw image that hold
data, each with the SHA-256 of its bytes; every other byte of the image is
zero (docs/agent-protocol.md §5). The map is built by the server from the
same bytes as the version's whole-image SHA-256, so a disk holds the version
exactly when each range hashes right and everything else reads as zeros —
which is what :func:`mismatch` checks, reading only the data of a sparse
file, and hashing ranges on several threads at once (``hashlib`` releases
the GIL), where the whole-image SHA-256 would be one sequential pass over
the zeros as well.

Contracts:

- :meth:`DataMap.from_json` accepts only a well-formed map of exactly the
  image the instruction names (its size and SHA-256), else ``ValueError``.
- :func:`mismatch` returns None when the target's first ``size`` bytes are
  the image, else the first difference it found, as a sentence.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "baas-datamap/1"
BLOCK = 4096
READ_CHUNK = 4 << 20
ZERO_CHUNK = bytes(1 << 20)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_WORKERS = 8

try:
    import blake3 as blake3_module
except ImportError:  # pragma: no cover - exercised by forcing the fallback
    blake3_module = None  # type: ignore[assignment]

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DataMap:
    size: int
    sha256: str
    ranges: tuple[tuple[int, int, str], ...]
    blake3: tuple[str, ...] | None = None  # each range's BLAKE3, when the server gives it

    @property
    def data_bytes(self) -> int:
        return sum(end - start for start, end, _ in self.ranges)

    @classmethod
    def from_json(cls, data: Any, *, size: int, sha256: str) -> DataMap:
        """Validate a map from the server for the image of ``size`` bytes and ``sha256``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} map")
        if data.get("size") != size or data.get("sha256") != sha256:
            raise ValueError("the map describes other bytes than the instruction's image")
        if data.get("block_size") != BLOCK:
            raise ValueError(f"unsupported block size {data.get('block_size')!r}")
        checked = _ranges(data.get("ranges"), size)
        fast = data.get("blake3")
        if fast is not None and (
            not isinstance(fast, list)
            or len(fast) != len(checked)
            or not all(isinstance(h, str) and SHA256_HEX.fullmatch(h) for h in fast)
        ):
            raise ValueError("the map's BLAKE3 list does not match its ranges")
        return cls(
            size=size,
            sha256=sha256,
            ranges=tuple(checked),
            blake3=tuple(fast) if fast is not None else None,
        )

    def can_check_fast(self) -> bool:
        """Whether ranges can be checked by BLAKE3 (the map has it, and so does this agent)."""
        return self.blake3 is not None and blake3_module is not None

    def gaps(self) -> Iterator[tuple[int, int]]:
        """The ``[start, end)`` runs between ranges: zeros in the image."""
        position = 0
        for start, end, _ in self.ranges:
            if start > position:
                yield position, start
            position = end
        if position < self.size:
            yield position, self.size


def _ranges(ranges: Any, size: int) -> list[tuple[int, int, str]]:
    """The map's ranges, checked: sorted, apart, inside the image, on blocks, with SHA-256s."""
    if not isinstance(ranges, list):
        raise ValueError("the map has no list of ranges")
    checked: list[tuple[int, int, str]] = []
    previous_end = 0
    for item in ranges:
        if not (isinstance(item, list) and len(item) == 3):
            raise ValueError(f"a range is [start, end, sha256], not {item!r}")
        start, end, digest = item
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(digest, str)):
            raise ValueError(f"a range is [start, end, sha256], not {item!r}")
        if start < previous_end or end <= start or end > size or start % BLOCK:
            raise ValueError(f"the range {start}-{end} is out of order or out of the image")
        if not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"the range {start}-{end} has no SHA-256")
        checked.append((start, end, digest))
        previous_end = end
    return checked


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
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.pool = ThreadPoolExecutor(
            max_workers=workers or default_workers(), thread_name_prefix="verify"
        )
        self.pending: dict[Future[str | None], int] = {}

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_range(self, index: int, *, fast: bool = False) -> None:
        start, end, digest = self.datamap.ranges[index]
        if fast and self.datamap.can_check_fast():
            assert self.datamap.blake3 is not None
            check = _RangeCheck(self.fd, start, end, self.datamap.blake3[index], "BLAKE3")
        else:
            check = _RangeCheck(self.fd, start, end, digest, "SHA-256")
        self._submit(check)

    def check_gaps(self) -> None:
        for start, end in self.datamap.gaps():
            self._submit(_ZerosCheck(self.fd, start, end, self.sparse))

    def _submit(self, check: _Check) -> None:
        self.pending[self.pool.submit(check)] = check.end - check.offset

    def result(self, progress: Progress | None = None) -> str | None:
        done = 0
        while self.pending:
            finished, _ = wait(self.pending, return_when=FIRST_EXCEPTION, timeout=0.5)
            for future in finished:
                length = self.pending.pop(future)
                try:
                    reason = future.result()
                except OSError as exc:
                    reason = f"reading the disk failed: {exc}"
                if reason is not None:
                    return reason
                done += length
            if progress is not None and finished:
                progress(done)
        return None

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_buffers = threading.local()


def _buffer() -> memoryview:
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(READ_CHUNK))
    return view


class _Check:
    """One part of the image to check: ``__call__`` returns None or what differs."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.offset, self.end = fd, start, end

    def _read(self, start: int, end: int) -> Iterator[memoryview]:
        view = _buffer()
        position = start
        while position < end:
            got = os.preadv(self.fd, [view[: min(READ_CHUNK, end - position)]], position)
            if got == 0:
                raise OSError(errno.EIO, f"unexpected end of the disk at byte {position}")
            yield view[:got]
            position += got

    def __call__(self) -> str | None:
        raise NotImplementedError


class _RangeCheck(_Check):
    """Hash ``[start, end)`` and compare it with the map's SHA-256."""

    def __init__(self, fd: int, start: int, end: int, digest: str, algorithm: str) -> None:
        super().__init__(fd, start, end)
        self.digest = digest
        self.algorithm = algorithm

    def __call__(self) -> str | None:
        hasher = blake3_module.blake3() if self.algorithm == "BLAKE3" else hashlib.sha256()
        for chunk in self._read(self.offset, self.end):
            hasher.update(chunk)
        if hasher.hexdigest() != self.digest:
            return (
                f"bytes {self.offset}-{self.end} differ from the image ({self.algorithm} mismatch)"
            )
        return None


class _ZerosCheck(_Check):
    """Check that ``[start, end)`` reads as zeros; on a file, only data is read."""

    def __init__(self, fd: int, start: int, end: int, sparse: bool) -> None:
        super().__init__(fd, start, end)
        self.sparse = sparse

    def __call__(self) -> str | None:
        for start, end in self._data_runs():
            for chunk in self._read(start, end):
                for piece in range(0, len(chunk), len(ZERO_CHUNK)):
                    if not ZERO_CHUNK.startswith(chunk[piece : piece + len(ZERO_CHUNK)]):
                        return f"bytes {start}-{end} should be zeros and are not"
        return None

    def _data_runs(self) -> Iterator[tuple[int, int]]:
        if not self.sparse:
            yield self.offset, self.end
            return
        position = self.offset
        while position < self.end:
            try:
                data = os.lseek(self.fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return  # holes to the end of the file
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    yield position, self.end  # no SEEK_DATA here: read it all
                    return
                raise
            if data >= self.end:
                return
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), self.end)
            yield data, hole
            position = hole
