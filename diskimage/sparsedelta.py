"""Deltas: a disk's changes against a version it was flashed with, and the version composed back.

A delta is an Android sparse image (:mod:`diskimage.sparse`) of the whole disk
in which a ``DONT_CARE`` chunk means **as in the base version** — not zeros,
as in any other sparse image. What changed comes as ``RAW`` chunks (new bytes)
and ``FILL`` chunks (a repeated pattern; a ``FILL`` of zeros for data that
became zeros). ``CRC32`` chunks are refused: the check of the result is the
data map it must have (:func:`map_digest`), computed by the sender from the
disk and by the receiver from what it composed.

- :func:`map_digest`: the digest of a data map's ranges and their BLAKE3s —
  what the sender and the receiver compare (``Upload-Map-Digest``).
- :func:`block_hashes`: 16 bytes of BLAKE3 per 4 KiB block of a piece of an
  image, so a sender holding only the disk can tell which blocks of a range
  changed without the base's bytes (the server hashes the base's); and
  :func:`hashes_digest`, one digest of a run's block hashes.
- :func:`delta_length` and :func:`delta_stream`: the delta of a list of
  changed runs, its length known before the first byte (no chunked upload).
- :class:`DeltaComposer`: the receiver's side. Fed the delta in pieces of any
  size, it hands on the whole new image in order — the delta's bytes where it
  has them, the base's bytes (read through a callback, only where the base
  has data) where it says "as in the base", zeros as shared zero views — so
  whatever stores an upload stores the composed version like any other.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from diskimage import BLOCK, CHUNK
from diskimage.datamap import FORMAT, DataMap
from diskimage.holes import zero_pieces
from diskimage.sparse import (
    CHUNK_HEADER,
    CRC32,
    DONT_CARE,
    FILL,
    HEADER,
    MAGIC,
    RAW,
    SparseImageDecoder,
    SparseImageError,
)

try:
    import blake3 as blake3_module
except ImportError:  # pragma: no cover - a host without it syncs whole disks
    blake3_module = None  # type: ignore[assignment]

HASH_BYTES = 16  # of each block's BLAKE3: enough to tell changed blocks apart
FILL_PAYLOAD = 4


class DeltaError(ValueError):
    """The bytes are not a delta of the base they are meant for; the message says why."""


def available() -> bool:
    """Whether this host can find and check changes (it needs BLAKE3)."""
    return blake3_module is not None


# --- What both sides compare ----------------------------------------------------------


def map_digest(datamap: DataMap) -> str:
    """Hex SHA-256 of the map's size, ranges and their BLAKE3s (not their SHA-256s, which
    a large version gets later): equal digests, equal data maps, equal images."""
    if datamap.blake3 is None:
        raise DeltaError("the data map has no BLAKE3 of its ranges")
    digest = hashlib.sha256(f"{FORMAT};{BLOCK};{datamap.size}".encode())
    for (start, end, _), fast in zip(datamap.ranges, datamap.blake3, strict=True):
        digest.update(f";{start}-{end}:{fast}".encode())
    return digest.hexdigest()


def block_hashes(data: bytes | bytearray | memoryview) -> bytes:
    """The first HASH_BYTES of the BLAKE3 of each BLOCK of ``data`` (the last may be short)."""
    view = memoryview(data).cast("B")
    return b"".join(
        blake3_module.blake3(view[at : at + BLOCK]).digest(HASH_BYTES)
        for at in range(0, len(view), BLOCK)
    )


def hashes_digest(hashes: bytes | bytearray | memoryview) -> str:
    """Hex BLAKE3 of a run's block hashes: what the run's bytes are, told in 32 bytes by a
    server that keeps block hashes, checked by a client that has the bytes."""
    return str(blake3_module.blake3(hashes).hexdigest())


# --- The sender's side: changed runs as a delta ------------------------------------------


@dataclass(frozen=True)
class Run:
    """``[start, end)`` of the disk that differs from the base: its bytes, or zeros."""

    start: int
    end: int
    zeros: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


def _chunks(runs: Sequence[Run], size: int) -> list[tuple[int, int, int]]:
    """(kind, start, end) covering ``[0, size)``: DONT_CARE between the runs."""
    if size % BLOCK:
        raise DeltaError(f"a delta holds whole {BLOCK}-byte blocks; the image is {size} bytes")
    chunks: list[tuple[int, int, int]] = []
    position = 0
    for run in runs:
        if run.start % BLOCK or run.end % BLOCK or run.start < position or run.end <= run.start:
            raise DeltaError(f"the run {run.start}-{run.end} is out of order or off a block")
        if run.start > position:
            chunks.append((DONT_CARE, position, run.start))
        chunks.append((FILL if run.zeros else RAW, run.start, run.end))
        position = run.end
    if position > size:
        raise DeltaError(f"a run ends at {position}, past the image's {size} bytes")
    if position < size:
        chunks.append((DONT_CARE, position, size))
    return chunks


def _payload(kind: int, start: int, end: int) -> int:
    return end - start if kind == RAW else FILL_PAYLOAD if kind == FILL else 0


def delta_length(runs: Sequence[Run], size: int) -> int:
    """Bytes of the delta :func:`delta_stream` writes for ``runs`` of an image of ``size``."""
    chunks = _chunks(runs, size)
    return HEADER.size + sum(CHUNK_HEADER.size + _payload(*chunk) for chunk in chunks)


def delta_stream(
    runs: Sequence[Run], size: int, read: Callable[[int, int], bytes]
) -> Iterator[bytes]:
    """The delta: ``read(start, end)`` gives the disk's bytes of a run, asked for at most
    CHUNK bytes at a time, in order."""
    chunks = _chunks(runs, size)
    yield HEADER.pack(
        MAGIC, 1, 0, HEADER.size, CHUNK_HEADER.size, BLOCK, size // BLOCK, len(chunks), 0
    )
    for kind, start, end in chunks:
        total = CHUNK_HEADER.size + _payload(kind, start, end)
        yield CHUNK_HEADER.pack(kind, 0, (end - start) // BLOCK, total)
        if kind == FILL:
            yield bytes(FILL_PAYLOAD)
        elif kind == RAW:
            for at in range(start, end, CHUNK):
                piece = read(at, min(end, at + CHUNK))
                if len(piece) != min(end, at + CHUNK) - at:
                    raise DeltaError(f"the disk ended at byte {at + len(piece)}")
                yield piece


# --- The receiver's side: base + delta -> the image ---------------------------------------

ReadBase = Callable[[int, int], bytes]  # [start, end) inside one data range of the base


def base_pieces(
    ranges: Sequence[tuple[int, int]], start: int, end: int, read: ReadBase
) -> Iterator[bytes | memoryview]:
    """The base's bytes of ``[start, end)`` in order, in pieces of at most CHUNK bytes: its
    data read with ``read`` (never across a range's end), zeros as shared views."""
    position = start
    for range_start, range_end in _overlapping(ranges, start, end):
        yield from zero_pieces(max(range_start, position) - position)
        position = max(range_start, position)
        stop = min(range_end, end)
        while position < stop:
            take = min(CHUNK, stop - position)
            yield read(position, position + take)
            position += take
    yield from zero_pieces(end - position)


def _overlapping(
    ranges: Sequence[tuple[int, int]], start: int, end: int
) -> Iterator[tuple[int, int]]:
    index = max(0, bisect_right(ranges, (start, start)) - 1)
    for range_start, range_end in ranges[index:]:
        if range_start >= end:
            return
        if range_end > start:
            yield range_start, range_end


Out = Callable[[bytes | memoryview], None]


class DeltaComposer:
    """Composes a version from a base and a delta written to it in pieces of any size.

    ``out`` receives the new image's raw bytes in order, in pieces of at most
    CHUNK bytes: the delta's own bytes (immutable ``bytes``), the base's
    (``read``, only inside ``ranges``, the base's data ranges in order), and
    zeros as read-only views of a shared zero buffer. Raises :class:`DeltaError`
    for anything that is not a well-formed delta of a base of ``size`` bytes —
    as soon as it shows, so a caller stops and stores nothing.
    """

    def __init__(
        self, *, size: int, ranges: Sequence[tuple[int, int]], read: ReadBase, out: Out
    ) -> None:
        self.size = size
        self.ranges = list(ranges)
        self.read = read
        self.out = out
        self.position = 0  # raw bytes handed on
        self.received = 0  # bytes of the delta
        self.carried = 0  # raw bytes the delta itself carried (RAW and FILL chunks)
        self._keep = False  # the chunk being read means "as in the base"
        self._decoder = SparseImageDecoder(self._data, self._hole, self._begins)
        self._size_checked = False

    def write(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self._decoder.write(data)
        except SparseImageError as exc:
            raise DeltaError(str(exc)) from exc
        self._check_size()

    def finish(self) -> None:
        """The delta ended: raise unless it was complete (then the whole image was handed on)."""
        if not self._decoder.block_size:
            raise DeltaError("The delta is empty or shorter than a sparse image's header.")
        try:
            self._decoder.finish()
        except SparseImageError as exc:
            raise DeltaError(str(exc)) from exc
        if self.position != self.size:  # pragma: no cover - the decoder counted the blocks
            raise DeltaError(f"the delta covers {self.position} bytes of {self.size}")

    def _check_size(self) -> None:
        if self._size_checked or not self._decoder.block_size:
            return
        self._size_checked = True
        if self._decoder.size != self.size:
            raise DeltaError(
                f"The delta describes an image of {self._decoder.size} bytes, but its base "
                f"holds {self.size}: it is not a delta of that version."
            )

    def _begins(self, kind: int, first: int, blocks: int) -> None:
        self._check_size()
        if kind == CRC32:
            raise DeltaError(
                "A delta carries no CRC-32 chunks: the composed image is checked against "
                "the data map in Upload-Map-Digest instead."
            )
        self._keep = kind == DONT_CARE
        if kind != DONT_CARE:
            self.carried += blocks * self._decoder.block_size

    def _data(self, data: bytes) -> None:
        self.out(data)
        self.position += len(data)

    def _hole(self, length: int) -> None:
        end = self.position + length
        pieces: Iterable[bytes | memoryview] = (
            base_pieces(self.ranges, self.position, end, self.read)
            if self._keep
            else zero_pieces(length)
        )
        for piece in pieces:
            self.out(piece)
        self.position = end
