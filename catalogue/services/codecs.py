"""How a version's bytes are stored: the decoders and encoders of each compression, and
the record that a stored file cannot be trusted.

The lowest of the processing modules (``datamaps``, ``digests``, ``compression``,
``renditions``, ``bootfiles`` and ``delivery`` read stored files through it): it
imports only the models and the byte formats, so the steps above it form no circle.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from typing import BinaryIO, Protocol

import zstandard

from catalogue.models import Compression, Version
from diskimage import CHUNK as CHUNK  # re-exported by compression
from diskimage.datamap import DataMap
from diskimage.seekable import FramedZstdEncoder

logger = logging.getLogger(__name__)

ZSTD_LEVEL = 3  # zstd's default: far faster than gzip at a better ratio
GZIP_LEVEL = 6  # zlib's default
DECODE_ERRORS = (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError)


class CompressionError(Exception):
    """A version could not be rewritten."""


class VersionCorrupt(CompressionError):
    """The stored bytes do not decode to the version's raw size and SHA-256.

    Nothing is swapped; retrying cannot help, so the task fails loudly.
    """


class MapMismatch(CompressionError):
    """The version's data map does not describe its bytes."""


class ConcurrentChange(CompressionError):
    """The version or its files changed while we worked; running again will settle it."""


# --- Codecs -------------------------------------------------------------------


class Encoder(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class Identity:
    """The "none" encoder: raw bytes pass through (and become holes where zero)."""

    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _GzipReader(gzip.GzipFile):
    """A gzip reader that also closes the file it reads, like zstd's stream reader."""

    def close(self) -> None:
        source = self.fileobj
        try:
            super().close()
        finally:
            close = getattr(source, "close", None)  # typeshed's file objects lack close()
            if close is not None:
                close()


class DecodedTooLarge(VersionCorrupt):
    """A stored file decodes to more than it may: its version's size (what its headers
    announced at upload) or BAAS_MAX_IMAGE_SIZE. Decoding stops right there."""

    def __init__(self, limit: int, decoded: int):
        self.limit, self.decoded = limit, decoded
        super().__init__(
            f"The stored data decodes to more than the {limit} bytes it announced: decoding "
            f"stopped after {decoded} bytes (a compression bomb, or data damaged on the way); "
            "upload it again."
        )


class _BoundedReader:
    """A raw reader that raises DecodedTooLarge as soon as its output passes ``limit``:
    at most one read (``CHUNK``) past it is ever decoded."""

    def __init__(self, raw: BinaryIO, limit: int):
        self._raw, self._limit, self.decoded = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(CHUNK if size is None or size < 0 else size)
        self.decoded += len(data)
        if self.decoded > self._limit:
            raise DecodedTooLarge(self._limit, self.decoded)
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _BoundedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def raw_reader(stored: BinaryIO, compression: str, *, limit: int | None = None) -> BinaryIO:
    """A reader of the raw image bytes inside ``stored``, a file in ``compression``.

    Closing the reader closes ``stored``. Reads stream: at most ``CHUNK`` of
    compressed input is held at a time. Corrupt input raises one of
    ``DECODE_ERRORS`` while reading. With ``limit`` (the raw size the bytes
    must have), a read that takes the output past it raises DecodedTooLarge:
    a small file that decodes to far more costs at most ``limit`` bytes of work.
    A read may return less than asked (never nothing before the end).
    """
    raw: BinaryIO
    if compression == Compression.ZSTD:
        dctx = zstandard.ZstdDecompressor()
        raw = dctx.stream_reader(stored, read_size=CHUNK, read_across_frames=True)
    elif compression == Compression.GZIP:
        # A GzipFile reads as a binary file does; typeshed does not call it a BinaryIO.
        raw = _GzipReader(fileobj=stored, mode="rb")  # type: ignore[assignment]
    else:
        return stored
    if limit is None:
        return raw
    # read() and close() are all a raw reader's users call.
    return _BoundedReader(raw, limit)  # type: ignore[return-value]


def encoder_for(
    compression: str, raw_size: int | None = None, datamap: DataMap | None = None
) -> Encoder:
    """A streaming encoder to ``compression``.

    zstd uses every core (``threads=-1``: the output does not depend on the
    number of workers), records ``raw_size`` in the frame when given, and
    writes a frame checksum; with the version's data map it writes one frame
    per range and a seek table (``diskimage.seekable``), so that agents can
    be sent the data alone. gzip output carries no timestamp, so the same
    input always gives the same bytes.
    """
    if compression == Compression.ZSTD and datamap is not None:
        return FramedZstdEncoder(datamap, ZSTD_LEVEL)
    if compression == Compression.ZSTD:
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
        return cctx.compressobj(size=-1 if raw_size is None else raw_size)
    if compression == Compression.GZIP:
        return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return Identity()


# --- A file that cannot be trusted -----------------------------------------------------


def version_damaged(version: Version, reason: str) -> VersionCorrupt:
    """Record that the version's stored file cannot be trusted (shown with the version);
    return the error to raise."""
    Version.objects.filter(pk=version.pk).update(damaged=reason[:500])
    logger.error(
        "Version %s (id %s) of image %s is damaged: %s",
        version.number,
        version.pk,
        version.image_id,
        reason,
    )
    return VersionCorrupt(reason)
