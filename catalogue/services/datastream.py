"""A version's data alone: the bytes of its data map's ranges, in order.

What an agent needs to flash a mostly empty disk image is its data, not its
zeros. For a version stored raw the data stream is the ranges' bytes read
from the file; for one stored zstd in frames (``diskimage.seekable``) it is
the frames that hold the ranges, which concatenated are one zstd stream of
the ranges in order (or, for a delta that needs some blocks of a range, those
blocks raw, decoded from their frame: :class:`DecodedDataStream`). Either way
it is read straight from the stored file, by offset, so a compression job
swapping the file afterwards does not disturb a transfer in progress; single
byte ranges let a broken transfer resume.
"""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from catalogue.models import Compression, Version
from catalogue.services.datamaps import version_map
from catalogue.services.delivery import ByteRange, open_stored, version_tag
from catalogue.services.pipeline import version_process
from diskimage.seekable import data_frames, read_seek_table

READ = 1 << 20


@dataclass
class DataStream:
    version: Version
    file: BinaryIO
    pieces: list[tuple[int, int]]  # (offset in the file, length), in order
    compression: str  # how the bytes are encoded: none or zstd

    @property
    def size(self) -> int:
        return sum(length for _, length in self.pieces)

    def etag(self) -> str:
        return f'"{version_tag(self.version)}.data.{self.compression}.{self.size}"'

    def close(self) -> None:
        self.file.close()

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of a piece, from ``offset`` (as ``pieces`` counts offsets)."""
        data = os.pread(self.file.fileno(), length, offset)
        if len(data) < length:
            raise OSError(f"the stored file of version {self.version.pk} is short")
        return data


def data_stream_open(version: Version) -> DataStream | None:
    """The version's data stream, or None when it has none (yet).

    None when the version has no data map (one is then built in the
    background), or is stored gzip-compressed or zstd without frames (an
    agent then downloads the whole file).
    """
    datamap = version_map(version)
    if datamap is None:
        version_process(version.pk)  # which maps it
        return None
    stored = open_stored(version)
    if version.stored_compression == Compression.NONE:
        pieces = [(start, end - start) for start, end, _ in datamap.ranges]
        return DataStream(version, stored, pieces, Compression.NONE)
    if version.stored_compression == Compression.ZSTD:
        frames = read_seek_table(stored.fileno())
        chosen = data_frames(frames, datamap) if frames is not None else None
        if chosen is not None:
            pieces = [(frame.offset, frame.length) for frame in chosen]
            return DataStream(version, stored, pieces, Compression.ZSTD)
    stored.close()
    return None


class PiecesReader:
    """A file-like reader of ``byte_range`` (or all) of the concatenated pieces."""

    def __init__(self, stream: DataStream, byte_range: ByteRange | None):
        self.stream = stream
        start = byte_range.start if byte_range else 0
        self.remaining = byte_range.length if byte_range else stream.size
        self._pieces = list(self._from(start))

    def _from(self, start: int):
        """The (offset, length) still to send, beginning ``start`` bytes into the stream."""
        for offset, length in self.stream.pieces:
            if start >= length:
                start -= length
                continue
            yield offset + start, length - start
            start = 0

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0 or not self._pieces:
            return b""
        wanted = READ if size is None or size < 0 else size
        offset, length = self._pieces[0]
        take = min(wanted, length, self.remaining)
        data = self.stream.read_at(offset, take)
        if take == length:
            self._pieces.pop(0)
        else:
            self._pieces[0] = (offset + take, length - take)
        self.remaining -= take
        return data

    def close(self) -> None:
        self.stream.close()


@dataclass
class DecodedDataStream(DataStream):
    """Raw bytes of a zstd data stream's ranges, or of parts of them (a delta re-flash's blocks).

    ``pieces`` are ``(offset in the image, length)``; ``bounds[i]`` is the ``[start, end)``
    of range ``i`` in the image and ``frames[i]`` its frame in the stored file. A piece is
    read by decoding its range's frame (the last one decoded is kept: a range's pieces
    follow one another) and sending the bytes asked for.
    """

    bounds: list[tuple[int, int]] = field(default_factory=list)
    frames: list[tuple[int, int]] = field(default_factory=list)
    whole_etag: str = ""
    selection: str = ""
    _decoded: tuple[int, bytes] | None = None

    def etag(self) -> str:
        chosen = hashlib.sha256(self.selection.encode()).hexdigest()[:16]
        return f'{self.whole_etag[:-1]}.raw.{chosen}"'

    def read_at(self, offset: int, length: int) -> bytes:
        index = bisect_right(self.bounds, (offset, float("inf"))) - 1
        start, end = self.bounds[index]
        if offset + length > end:
            raise ValueError(f"bytes {offset}-{offset + length} are not in one range")
        if self._decoded is None or self._decoded[0] != index:
            self._decoded = (index, self._decode(index, self._needed(index)))
        data = self._decoded[1][offset - start : offset - start + length]
        if len(data) != length:
            raise OSError(f"a frame of version {self.version.pk}'s stored file is short")
        return data

    def _needed(self, index: int) -> int:
        """How far into range ``index`` the pieces reach (its frame is decoded that far)."""
        start, end = self.bounds[index]
        return max(
            (offset + length - start for offset, length in self.pieces if start <= offset < end),
            default=end - start,
        )

    def _decode(self, index: int, length: int) -> bytes:
        frame_offset, frame_length = self.frames[index]
        compressed = os.pread(self.file.fileno(), frame_length, frame_offset)
        try:
            with zstandard.ZstdDecompressor().stream_reader(compressed) as reader:
                pieces, have = [], 0  # decoded as far as the pieces reach, no further
                while have < length and (piece := reader.read(length - have)):
                    pieces.append(piece)
                    have += len(piece)
                return b"".join(pieces)
        except zstandard.ZstdError as exc:
            raise OSError(
                f"a frame of version {self.version.pk}'s stored file does not decode"
            ) from exc
