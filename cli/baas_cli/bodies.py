"""An upload's body made of a disk file's data alone: an Android sparse image, or zstd frames.

The filesystem says where the file's data is (SEEK_DATA/SEEK_HOLE,
:func:`diskimage.holes.data_extents`); the holes never cross the network:

* ``sparse``: an Android sparse image (:mod:`diskimage.sparse`'s format): the
  data as ``RAW`` chunks sent straight from the file, each hole a 12-byte
  ``DONT_CARE`` chunk. Its length is known before a byte is sent.
* ``zstd``: one zstd frame per piece of data (at most ``FRAME_DATA`` bytes,
  compressed on a thread of its own beside the sending), each hole RLE zero
  frames made by hand (:func:`diskimage.seekable.zero_frame`, four bytes per
  128 KiB). Compressing a piece always gives the same bytes, so a resumed
  upload makes again only the frame it stopped in.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from baas_cli.errors import LocalError
from diskimage import sparse
from diskimage.holes import data_extents

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

SPARSE, ZSTD = "sparse", "zstd"
RAW_MAX = 256 << 20  # data per RAW chunk (its size field is 32 bits)
FRAME_DATA = 8 << 20  # data per zstd frame
ZSTD_LEVEL = 3
BATCH = 32 << 20  # compressed bytes per request (PATCH) of a zstd upload

Segment = tuple[int, int, bool]  # start, end, holds data


@dataclass(frozen=True)
class Layout:
    """Where a file's data is: what both encodings are made from."""

    size: int
    extents: tuple[tuple[int, int], ...]

    @property
    def data_bytes(self) -> int:
        return sum(end - start for start, end in self.extents)

    @classmethod
    def of(cls, fd: int) -> Layout:
        size = os.fstat(fd).st_size
        return cls(size, tuple(data_extents(fd, 0, size, align=4096)))

    def sparse_possible(self) -> bool:
        return self.size % 4 == 0 and self.size // math.gcd(self.size, 4096) < 1 << 32


# --- Android sparse image ---------------------------------------------------------------


def sparse_pieces(layout: Layout) -> list[bytes | tuple[int, int]]:
    """The sparse image as pieces: headers as bytes, data as (file offset, length)."""
    block = math.gcd(layout.size, 4096)
    chunks: list[tuple[int, int, int]] = []  # kind, start, length
    position = 0
    for start, end in layout.extents:
        start, end = start // block * block, min(-(-end // block) * block, layout.size)
        start = max(start, position)
        if start >= end:
            continue
        if start > position:
            chunks.append((sparse.DONT_CARE, position, start - position))
        chunks += [(sparse.RAW, p, min(RAW_MAX, end - p)) for p in range(start, end, RAW_MAX)]
        position = end
    if position < layout.size:
        chunks.append((sparse.DONT_CARE, position, layout.size - position))
    head = sparse.HEADER.pack(
        sparse.MAGIC,
        1,
        0,
        sparse.HEADER.size,
        sparse.CHUNK_HEADER.size,
        block,
        layout.size // block,
        len(chunks),
        0,
    )
    pieces: list[bytes | tuple[int, int]] = [head]
    for kind, start, length in chunks:
        data = length if kind == sparse.RAW else 0
        header = sparse.CHUNK_HEADER.pack(kind, 0, length // block, sparse.CHUNK_HEADER.size + data)
        pieces.append(header)
        if data:
            pieces.append((start, length))
    return _merge_small(pieces)


def _merge_small(pieces: list[bytes | tuple[int, int]]) -> list[bytes | tuple[int, int]]:
    """Adjacent byte pieces as one (fewer small sends)."""
    merged: list[bytes | tuple[int, int]] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return merged


# --- zstd frames ------------------------------------------------------------------------


def zstd_segments(layout: Layout) -> list[Segment]:
    """The file cut where frames are: holes (up to a zero frame each) and data pieces."""
    from diskimage.seekable import ZERO_FRAME_MAX  # zstd only: a sparse push never needs it

    segments: list[Segment] = []
    position = 0
    for start, end in [*layout.extents, (layout.size, layout.size)]:
        for hole in range(position, start, ZERO_FRAME_MAX):
            segments.append((hole, min(start, hole + ZERO_FRAME_MAX), False))
        for piece in range(start, end, FRAME_DATA):
            segments.append((piece, min(end, piece + FRAME_DATA), True))
        position = end
    return segments


class FrameMaker:
    """Makes the frame of a segment: the same bytes every time for the same file."""

    def __init__(self, fd: int, threads: int = 0) -> None:
        import zstandard

        self.fd = fd
        self.compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, threads=threads
        )

    def frame(self, segment: Segment) -> bytes:
        start, end, data = segment
        if not data:
            from diskimage.seekable import zero_frame

            return zero_frame(end - start)
        raw = os.pread(self.fd, end - start, start)
        if len(raw) != end - start:
            raise LocalError("The file got shorter while it was read: start again.")
        return self.compressor.compress(raw)


def frames(maker: FrameMaker, segments: list[Segment], first: int = 0) -> Iterator[bytes]:
    for segment in segments[first:]:
        yield maker.frame(segment)


class FrameSource:
    """zstd frames of the segments, made on a few threads ahead of the sending.

    ``lengths`` are the compressed lengths of the frames made so far (kept in
    the state file), so a resumed upload finds the frame its offset falls in
    without compressing what came before.
    """

    def __init__(self, fd: int, segments: list[Segment], lengths: list[int]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.fd, self.segments = fd, segments
        self.lengths = list(lengths[: len(segments)])
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
        self.makers: dict[int, FrameMaker] = {}

    def _frame(self, index: int) -> bytes:
        ident = threading.get_ident()
        maker = self.makers.get(ident) or self.makers.setdefault(ident, FrameMaker(self.fd))
        return maker.frame(self.segments[index])

    def locate(self, offset: int) -> tuple[int, int]:
        """(frame index, bytes of it already sent) for a body offset."""
        position = 0
        for index in range(len(self.segments)):
            if index >= len(self.lengths):
                self.lengths.append(len(self._frame(index)))
            if position + self.lengths[index] > offset:
                return index, offset - position
            position += self.lengths[index]
        return len(self.segments), offset - position

    def batches(self, index: int, skip: int) -> Iterator[tuple[list[bytes], bool]]:
        """Lists of frames of about BATCH bytes, and whether the list is the last."""
        ahead = _Ahead(self.pool, self._frame, range(index, len(self.segments)))
        batch: list[bytes] = []
        size = 0
        for number, frame in ahead:
            if number < len(self.lengths):
                if self.lengths[number] != len(frame):
                    raise LocalError("Compressing the file again gave other bytes: use --restart.")
            else:
                self.lengths.append(len(frame))
            if skip:
                frame, skip = frame[skip:], 0
            batch.append(frame)
            size += len(frame)
            if size >= BATCH:
                yield batch, number == len(self.segments) - 1
                batch, size = [], 0
        if batch or index >= len(self.segments):
            yield batch, True


class _Ahead:
    """Results of ``work(i)`` for each i, in order, at most LOOKAHEAD computed ahead."""

    LOOKAHEAD = 8

    def __init__(self, pool: ThreadPoolExecutor, work: Callable[[int], bytes], indexes: range):
        self.pool, self.work, self.indexes = pool, work, indexes

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        pending: collections.deque = collections.deque()
        for index in self.indexes:
            pending.append((index, self.pool.submit(self.work, index)))
            if len(pending) > self.LOOKAHEAD:
                number, future = pending.popleft()
                yield number, future.result()
        while pending:
            number, future = pending.popleft()
            yield number, future.result()
