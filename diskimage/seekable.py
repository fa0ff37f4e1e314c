"""zstd files in frames that follow a version's data map, with a seek table.

A version stored zstd-compressed is written as one zstd frame per range of
its data map (:mod:`diskimage.datamap`) and zero frames for the runs between
them, then the seek table of zstd's seekable format: a skippable frame that
every decoder ignores, listing each frame's compressed and decompressed size.
The file stays a plain ``.zst`` (``zstd -d`` gives the image back), and the
server can send an agent just the frames that hold data — concatenated, they
are a zstd stream of the data ranges in order — so neither the network nor
the agent's CPU ever sees the zeros.

Each data frame begins and ends on a 4 KiB block of the file (``align``):
skippable frames of zeros fill the rest of a block, listed in the seek table
as frames of no raw bytes. So a range whose bytes did not change from one
version to the next is the same frame, at a block boundary, in both files,
and the filesystem can hold it once for both (:mod:`diskimage.extents`); it
costs ~4 KiB per range.

Zero frames are written by hand, not compressed: RLE blocks of 128 KiB of
zero bytes (RFC 8878 §3.1.1.2), four bytes each, so a gigabyte of zeros costs
32 KiB and no CPU. Frames hold at most ``ZERO_FRAME_MAX`` bytes, as the seek
table's sizes are 32-bit.

Why not ``pyzstd``'s ``SeekableZstdFile``: it writes the same seekable format,
but cuts frames by size or where the writer flushes and compresses every byte
it is given, the zeros included — here, 5.4 GiB of zeros for a 6 GiB image,
where hand-made zero frames cost nothing; and its seek table is private,
while the server needs exactly that (:func:`read_seek_table`,
:func:`data_frames`) to send a map's frames with ``sendfile`` without
decoding them. It would add a dependency, to the agent too, for the 40 lines
of table handling below, so it is not used.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from diskimage import BLOCK
from diskimage.datamap import DataMap
from diskimage.holes import is_zeros

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC = 0x184D2A5E  # the seekable format's skippable frame
PADDING_MAGIC = 0x184D2A50  # another skippable frame: padding to a block boundary
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER = struct.Struct("<IBI")  # number of frames, descriptor, seekable magic
ENTRY = struct.Struct("<II")  # compressed size, decompressed size
RLE_BLOCK = 128 << 10  # the largest block: the window is 128 KiB
ZERO_FRAME_MAX = 1 << 30
# Frame header: magic; descriptor 0xC0 (8-byte content size, not single segment,
# no checksum, no dictionary); window descriptor 0x38 (2**(10+7) = 128 KiB).
_FRAME_HEADER = struct.Struct("<IBBQ")


def padding(position: int, align: int) -> bytes:
    """A skippable frame taking the file from ``position`` to the next multiple of
    ``align`` (nothing when it is on one; a block more when less than its 8-byte header
    is left)."""
    gap = -position % align
    if gap == 0:
        return b""
    if gap < 8:
        gap += align
    return struct.pack("<II", PADDING_MAGIC, gap - 8) + bytes(gap - 8)


def zero_frame(length: int) -> bytes:
    """A zstd frame that decodes to ``length`` zero bytes (0 < length <= ZERO_FRAME_MAX)."""
    if not 0 < length <= ZERO_FRAME_MAX:
        raise ValueError(f"a zero frame holds 1 to {ZERO_FRAME_MAX} bytes, not {length}")
    full, rest = divmod(length, RLE_BLOCK)
    sizes = [RLE_BLOCK] * full + ([rest] if rest else [])
    blocks = bytearray()
    for index, size in enumerate(sizes):
        last = index == len(sizes) - 1
        header = int(last) | (1 << 1) | (size << 3)  # block type 1: RLE
        blocks += header.to_bytes(3, "little") + b"\0"
    return _FRAME_HEADER.pack(ZSTD_MAGIC, 0xC0, 0x38, length) + bytes(blocks)


def zeros_in_frames(length: int) -> bytes:
    """``length`` zero bytes as :class:`FramedZstdEncoder` writes an image without data:
    zero frames and their seek table (a few hundred KiB for 6 GiB, made at once)."""
    out, frames = bytearray(), []
    for start in range(0, length, ZERO_FRAME_MAX):
        size = min(ZERO_FRAME_MAX, length - start)
        frame = zero_frame(size)
        frames.append((len(frame), size))
        out += frame
    return bytes(out) + seek_table(frames)


def seek_table(frames: list[tuple[int, int]]) -> bytes:
    """The seekable format's skippable frame for ``(compressed, decompressed)`` sizes."""
    body = b"".join(ENTRY.pack(c, d) for c, d in frames)
    body += FOOTER.pack(len(frames), 0, SEEKABLE_MAGIC)
    return struct.pack("<II", SKIPPABLE_MAGIC, len(body)) + body


@dataclass(frozen=True)
class Frame:
    offset: int  # in the file
    length: int  # compressed bytes
    start: int  # in the raw image
    size: int  # raw bytes


def read_seek_table(fd: int) -> list[Frame] | None:
    """The frames of a seekable zstd file, or None if it has no (sound) seek table."""
    file_size = os.fstat(fd).st_size
    if file_size < FOOTER.size + 8:
        return None
    count, descriptor, magic = FOOTER.unpack(os.pread(fd, FOOTER.size, file_size - FOOTER.size))
    if magic != SEEKABLE_MAGIC or descriptor & 0x80 or descriptor & 0x7C:
        return None  # not seekable, or with per-frame checksums (not written here)
    table_size = 8 + count * ENTRY.size + FOOTER.size
    if table_size > file_size:
        return None
    table = os.pread(fd, table_size, file_size - table_size)
    frame_magic, body_size = struct.unpack_from("<II", table)
    if frame_magic != SKIPPABLE_MAGIC or body_size != table_size - 8:
        return None
    frames, offset, start = [], 0, 0
    for index in range(count):
        length, size = ENTRY.unpack_from(table, 8 + index * ENTRY.size)
        frames.append(Frame(offset=offset, length=length, start=start, size=size))
        offset += length
        start += size
    if offset != file_size - table_size:
        return None
    return frames


def data_frames(frames: list[Frame], datamap: DataMap) -> list[Frame] | None:
    """The frames that hold exactly the map's ranges, in order; None if they do not match.
    (Padding, frames of no raw bytes, is never one of them.)"""
    by_start = {frame.start: frame for frame in frames if frame.size}
    chosen = []
    for start, end, _ in datamap.ranges:
        frame = by_start.get(start)
        if frame is None or frame.size != end - start:
            return None
        chosen.append(frame)
    if sum(frame.size for frame in frames) != datamap.size:
        return None
    return chosen


class FramedZstdEncoder:
    """An encoder (``compress``/``flush``) writing a version in frames of its data map.

    Fed the raw image in order, in pieces of any size. Each range becomes one
    frame (compressed on every core), each run between ranges zero frames; a
    run that is not all zeros means the map is not of these bytes: ValueError.
    Each range's frame starts and ends on a multiple of ``align`` in the output
    (0: packed, as before).
    """

    def __init__(
        self, datamap: DataMap, level: int, write_checksum: bool = True, align: int = BLOCK
    ) -> None:
        import zstandard  # only where a version is compressed: the agent may run without it

        self.compressor = zstandard.ZstdCompressor(
            level=level, threads=-1, write_checksum=write_checksum
        )
        self.segments = list(datamap.segments())
        self.position = 0  # raw bytes taken
        self.index = 0  # the segment being filled
        self.pending = bytearray()  # the current range's bytes so far
        self.frames: list[tuple[int, int]] = []
        self.align = align
        self.written = 0  # bytes of output so far

    def compress(self, data: bytes | memoryview) -> bytes:
        out = bytearray()
        view = memoryview(data).cast("B")
        while view:
            if self.index >= len(self.segments):
                raise ValueError("more bytes than the data map describes")
            start, end, is_data = self.segments[self.index]
            take = min(len(view), end - self.position)
            piece, view = view[:take], view[take:]
            if is_data:
                self.pending += piece
            elif not is_zeros(piece):
                raise ValueError(f"data at byte {self.position} where the map says zeros")
            self.position += take
            if self.position == end:
                out += self._segment_done(start, end, is_data)
        return bytes(out)

    def flush(self) -> bytes:
        if self.index != len(self.segments):
            raise ValueError(f"the image ended at byte {self.position}, before its map does")
        return seek_table(self.frames)

    def _segment_done(self, start: int, end: int, is_data: bool) -> bytes:
        self.index += 1
        if is_data:
            frame = self.compressor.compress(bytes(self.pending))
            self.pending.clear()
            before = self._pad(self.written)
            self.frames.append((len(frame), end - start))
            after = self._pad(self.written + len(before) + len(frame))
            self.written += len(before) + len(frame) + len(after)
            return before + frame + after
        out = bytearray()
        while start < end:
            size = min(ZERO_FRAME_MAX, end - start)
            frame = zero_frame(size)
            self.frames.append((len(frame), size))
            out += frame
            start += size
        self.written += len(out)
        return bytes(out)

    def _pad(self, position: int) -> bytes:
        """Padding from ``position`` to the next boundary, listed in the seek table."""
        if not self.align:
            return b""
        pad = padding(position, self.align)
        if pad:
            self.frames.append((len(pad), 0))
        return pad
