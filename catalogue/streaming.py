"""Building blocks for streaming uploads: bounded decoders, qcow2 headers.

(Hashing beside I/O and the threads of an upload's stages: :mod:`catalogue.stages`.)

Nothing here holds more than a few chunks in memory, whatever the input: a
decoder hands its raw output on in pieces of at most ``CHUNK`` bytes, so a
small compressed "bomb" cannot expand in memory.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard

from catalogue import sparseimage, zstdblocks

CHUNK = 1 << 20
ZEROS = memoryview(bytes(CHUNK))  # read-only zeros, to hash a hole without allocating
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
QCOW2_MAGIC = b"QFI\xfb"
# qcow2 header: magic, version, backing file offset, backing file size, cluster bits, size.
QCOW2_HEADER = struct.Struct(">4sIQIIQ")

Sink = Callable[[bytes], None]


class DecodeError(ValueError):
    """The uploaded bytes are not valid in the encoding they claim."""


# --- Decoders -----------------------------------------------------------------------


class IdentityDecoder:
    """Passes bytes through unchanged."""

    def __init__(self, sink: Sink):
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._sink(data)

    def finish(self) -> None:
        return None


class GzipDecoder:
    """gzip, one member or several concatenated (as pigz writes), with bounded output."""

    def __init__(self, sink: Sink):
        self._sink = sink
        self._inflate = zlib.decompressobj(wbits=31)
        self._seen_member = False

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        except zlib.error as exc:
            raise DecodeError(f"The gzip data is corrupt: {exc}") from exc

    def _write(self, data: bytes) -> None:
        while data:
            if self._inflate.eof:  # what follows a member is the next member
                self._inflate = zlib.decompressobj(wbits=31)
            self._seen_member = True
            out = self._inflate.decompress(data, CHUNK)
            if out:
                self._sink(out)
            data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail

    def finish(self) -> None:
        while not self._inflate.eof and (out := self._inflate.decompress(b"", CHUNK)):
            self._sink(out)
        if not self._seen_member or not self._inflate.eof:
            raise DecodeError("The gzip data ends in the middle of a member: is it complete?")


class _SinkWriter:
    """The file-like object zstandard's stream writer pushes its output into."""

    def __init__(self, sink: Sink):
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)


class ZstdDecoder:
    """zstd, any number of frames, with output pushed on in pieces of at most CHUNK.

    zstandard's streaming writer bounds memory but cannot tell whether the
    input ended inside a frame, so a :class:`ZstdFrameTracker` follows the
    frame structure alongside it.
    """

    def __init__(self, sink: Sink):
        self._sink = sink
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            _SinkWriter(self._bounded), write_size=CHUNK, closefd=False
        )
        self._frames = ZstdFrameTracker(self._on_size)
        self._announced = 0  # raw bytes the frame headers seen so far announce
        self._decoded = 0

    def _on_size(self, size: int) -> None:
        self._announced += size

    def _bounded(self, data: bytes) -> None:
        """Output is refused as soon as it passes what the frames announce (a "bomb" whose
        headers claim less than it decodes to), unless a frame did not say."""
        self._decoded += len(data)
        if self._decoded > self._announced and not self._frames.unknown:
            raise DecodeError(
                "The zstd data is corrupt: it decodes to more than the "
                f"{self._announced} bytes its frame headers announce."
            )
        self._sink(data)

    def write(self, data: bytes) -> None:
        self._frames.feed(data)
        try:
            self._writer.write(data)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"The zstd data is corrupt: {exc}") from exc

    def finish(self) -> None:
        self._frames.finish()


class ZstdFrameTracker:
    """Follows the zstd frame format (RFC 8878) over a stream, skipping block contents.

    ``complete`` is true when the bytes fed so far end exactly after a whole
    frame. It reads only headers — a few bytes per 128 KiB block — so it costs
    nothing next to decoding. Each frame's content size goes to ``on_size`` as
    its header arrives; ``unknown`` tells whether a frame did not say. With
    ``write`` (``feed``) and ``finish`` it stands in for a decoder where nothing
    is decoded (a zstd upload stored as sent).
    """

    def __init__(self, on_size: Callable[[int], None] | None = None):
        self._frames = 0
        self._state = "magic"
        self._need = 4  # bytes of the current field still to collect
        self._field = b""
        self._skip = 0  # bytes of content still to pass over
        self._checksum = False
        self._on_size = on_size
        self._size_bytes = 0  # width of the current frame's content size field
        self.unknown = False

    @property
    def complete(self) -> bool:
        return self._frames > 0 and self._state == "magic" and not self._field and not self._skip

    def finish(self) -> None:
        """The stream ended: DecodeError unless it ended right after a whole frame."""
        if not self.complete:
            raise DecodeError("The zstd data ends in the middle of a frame: is it complete?")

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._field), len(data) - pos)
            self._field += data[pos : pos + take]
            pos += take
            if len(self._field) == self._need:
                field, self._field = self._field, b""
                self._on_field(field)

    write = feed

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _on_field(self, field: bytes) -> None:
        handler = getattr(self, f"_on_{self._state}")
        handler(field)

    def _on_magic(self, field: bytes) -> None:
        if field == ZSTD_MAGIC:
            self._expect("descriptor", 1)
        elif field[1:] == b"\x2a\x4d\x18" and field[0] & 0xF0 == 0x50:
            self._expect("skippable_size", 4)
        else:
            raise DecodeError("This is not zstd data (no frame magic where a frame begins).")

    def _on_skippable_size(self, field: bytes) -> None:
        self._skip = int.from_bytes(field, "little")
        self._frames += 1
        self._expect("magic", 4)

    def _on_descriptor(self, field: bytes) -> None:
        descriptor = field[0]
        single_segment = bool(descriptor & 0x20)
        self._checksum = bool(descriptor & 0x04)
        dictionary = (0, 1, 2, 4)[descriptor & 0x03]
        self._size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        # Window descriptor, dictionary id, content size: at least one byte in all.
        self._expect("header_rest", (0 if single_segment else 1) + dictionary + self._size_bytes)

    def _on_header_rest(self, field: bytes) -> None:
        if not self._size_bytes:
            self.unknown = True
        elif self._on_size is not None:
            size = int.from_bytes(field[len(field) - self._size_bytes :], "little")
            self._on_size(size + 256 if self._size_bytes == 2 else size)  # RFC 8878, 3.1.1.1.4
        self._expect("block", 3)

    def _on_block(self, field: bytes) -> None:
        header = int.from_bytes(field, "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise DecodeError("The zstd data is corrupt: a reserved block type.")
        self._skip = 1 if kind == 1 else size
        if not last:
            self._expect("block", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._end_frame()

    def _on_checksum(self, field: bytes) -> None:
        self._end_frame()

    def _end_frame(self) -> None:
        self._frames += 1
        self._expect("magic", 4)


class _ForeignErrors:
    """A decoder of another module, whose errors (``_error``) are raised as DecodeError."""

    _decoder: Any
    _error: type[Exception]

    def write(self, data: bytes) -> None:
        try:
            self._decoder.write(data)
        except self._error as exc:
            raise DecodeError(str(exc)) from exc

    def finish(self) -> None:
        try:
            self._decoder.finish()
        except self._error as exc:
            raise DecodeError(str(exc)) from exc


class HoleZstdDecoder(_ForeignErrors):
    """zstd decoded block by block: blocks of zeros reach ``on_hole`` as lengths only.

    See :mod:`catalogue.zstdblocks`; the errors are :class:`DecodeError`s here.
    """

    _error = zstdblocks.ZstdBlockError

    def __init__(self, sink: Sink, on_hole: Callable[[int], None], *, checksum: bool = True):
        self._decoder = zstdblocks.BlockZstdDecoder(sink, on_hole, checksum=checksum)

    @property
    def checksums(self) -> tuple[tuple[int, int, int], ...]:
        """The frame checksums left to check (``checksum=False``), see BlockZstdDecoder."""
        return tuple(self._decoder.checksums)


class SparseDecoder(_ForeignErrors):
    """An Android sparse image (:mod:`catalogue.sparseimage`): the raw image without its holes.

    Its zeros reach ``on_hole`` as lengths, or ``sink`` as zero bytes without one.
    ``crc_checks`` lists the CRC-32 chunks it carried, for the caller to check.
    """

    _error = sparseimage.SparseImageError

    def __init__(self, sink: Sink, on_hole: Callable[[int], None] | None = None):
        self._decoder = sparseimage.SparseImageDecoder(sink, on_hole or self._zeros)
        self._sink = sink

    @property
    def crc_checks(self) -> list[tuple[int, int]]:
        return self._decoder.crc_checks

    def _zeros(self, length: int) -> None:
        for start in range(0, length, CHUNK):
            self._sink(ZEROS.obj[: min(CHUNK, length - start)])


SPARSE = "sparse"  # the encoding of an Android sparse image (not a compression)
DECODERS = {"none": IdentityDecoder, "gzip": GzipDecoder, "zstd": ZstdDecoder}


def decoder_for(
    encoding: str,
    sink: Sink,
    on_hole: Callable[[int], None] | None = None,
    *,
    checksum: bool = True,
):
    """A decoder of ``encoding`` pushing raw bytes into ``sink``.

    With ``on_hole``, zstd's blocks of zeros reach it as lengths instead of
    zero bytes reaching ``sink`` (where libzstd's block API is available);
    ``checksum=False`` then leaves the frames' checksums to the caller (its
    ``checksums``).
    """
    if encoding == "zstd" and on_hole is not None and zstdblocks.available():
        return HoleZstdDecoder(sink, on_hole, checksum=checksum)
    if encoding == SPARSE:
        return SparseDecoder(sink, on_hole)
    return DECODERS[encoding](sink)


def sniff_encoding(head: bytes) -> str:
    """``zstd``/``gzip``/``sparse`` if ``head`` starts like one (a disk image never does),
    else ``none``."""
    if sparseimage.is_sparse_image(head):
        return SPARSE
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "none"


# --- qcow2 ------------------------------------------------------------------------


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    backing_file_offset: int
    virtual_size: int


def qcow2_header(head: bytes) -> Qcow2Header | None:
    """The header fields of a qcow2 file from its first bytes, or None if it is not qcow2.

    ``head`` must hold at least ``QCOW2_HEADER.size`` bytes unless the file is shorter.
    """
    if not head.startswith(QCOW2_MAGIC):
        return None
    if len(head) < QCOW2_HEADER.size:
        return Qcow2Header(version=0, backing_file_offset=0, virtual_size=0)
    _magic, version, backing, _bsize, _cbits, size = QCOW2_HEADER.unpack_from(head)
    return Qcow2Header(version=version, backing_file_offset=backing, virtual_size=size)
