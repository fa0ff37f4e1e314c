"""Bounded streaming decoders of an upload's encoding, and the checks of its first bytes.

An upload arrives as raw bytes, gzip, zstd or an Android sparse image; each
decoder takes it in pieces of any size (``write``, then ``finish``) and
pushes the raw image on to a ``sink``. Nothing here holds more than a few
chunks in memory, whatever the input: a decoder hands its raw output on in
pieces of at most ``CHUNK`` bytes, so a small compressed "bomb" cannot expand
in memory. Invalid input raises :class:`~diskimage.DecodeError`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diskimage import CHUNK, ZERO_CHUNK, DecodeError, sparse, zstdblocks
from diskimage.zstdframes import ZSTD_MAGIC, ZstdFrameWalker

GZIP_MAGIC = b"\x1f\x8b"
QCOW2_MAGIC = b"QFI\xfb"
# qcow2 header: magic, version, backing file offset, backing file size, cluster bits, size.
QCOW2_HEADER = struct.Struct(">4sIQIIQ")

Sink = Callable[[bytes], None]

__all__ = ["DecodeError", "decoder_for", "qcow2_header", "sniff_encoding"]


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
    input ended inside a frame, so a :class:`~diskimage.zstdframes.ZstdFrameWalker`
    follows the frame structure alongside it.
    """

    def __init__(self, sink: Sink):
        import zstandard  # only where zstd is decoded: the agent may run without it

        self._error = zstandard.ZstdError
        self._sink = sink
        # zstandard writes into any object with write(); its stubs ask for a whole IO[bytes].
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            _SinkWriter(self._bounded),  # type: ignore[arg-type]
            write_size=CHUNK,
            closefd=False,
        )
        self._frames = ZstdFrameWalker(self._on_size)
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
        except self._error as exc:
            raise DecodeError(f"The zstd data is corrupt: {exc}") from exc

    def finish(self) -> None:
        self._frames.finish()


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

    See :mod:`diskimage.zstdblocks`; the errors are :class:`DecodeError`s here.
    """

    _error = zstdblocks.ZstdBlockError

    def __init__(self, sink: Sink, on_hole: Callable[[int], None], *, checksum: bool = True):
        self._decoder = zstdblocks.BlockZstdDecoder(sink, on_hole, checksum=checksum)

    @property
    def checksums(self) -> tuple[tuple[int, int, int], ...]:
        """The frame checksums left to check (``checksum=False``), see BlockZstdDecoder."""
        return tuple(self._decoder.checksums)


class SparseDecoder(_ForeignErrors):
    """An Android sparse image (:mod:`diskimage.sparse`): the raw image without its holes.

    Its zeros reach ``on_hole`` as lengths, or ``sink`` as zero bytes without one.
    ``crc_checks`` lists the CRC-32 chunks it carried, for the caller to check.
    """

    _error = sparse.SparseImageError

    def __init__(self, sink: Sink, on_hole: Callable[[int], None] | None = None):
        self._decoder = sparse.SparseImageDecoder(sink, on_hole or self._zeros)
        self._sink = sink

    @property
    def crc_checks(self) -> list[tuple[int, int]]:
        checks: list[tuple[int, int]] = self._decoder.crc_checks
        return checks

    def state(self) -> dict[str, Any]:
        """Where it is in the stream (:meth:`diskimage.sparse.SparseImageDecoder.state`)."""
        state: dict[str, Any] = self._decoder.state()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self._decoder.restore(state)

    def _zeros(self, length: int) -> None:
        for start in range(0, length, CHUNK):
            self._sink(ZERO_CHUNK[: min(CHUNK, length - start)])


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
    if sparse.is_sparse_image(head):
        return SPARSE
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "none"


# --- qcow2 ---------------------------------------------------------------------------


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
