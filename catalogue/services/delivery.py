"""Downloads: which version, which bytes of it, and how to describe them in HTTP.

The HTTP view (``catalogue.apis.downloads``) stays thin; everything it decides
lives here as small functions:

* :func:`version_for_download` finds the version a user may read (404 otherwise);
* :func:`representation_open` opens the bytes to send: the stored file itself
  (its compression's bytes, sent with zero-copy ``sendfile``) or, when asked
  to decompress, a stream of the raw image decoded on the fly;
* :func:`range_select` turns ``Range``/``If-Range`` into one byte range;
* :class:`RangeReader` hands out exactly that range, keeping the file's
  descriptor visible so gunicorn still uses ``sendfile``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from accounts.rules import Actor
from catalogue import rules
from catalogue.exceptions import ImageNotFound, VersionNotFound
from catalogue.models import Compression, Image, Version
from catalogue.services.codecs import raw_reader
from catalogue.storage import SUFFIXES, get_storage

logger = logging.getLogger(__name__)

CONTENT_TYPES: dict[str, str] = {
    Compression.NONE: "application/octet-stream",
    Compression.GZIP: "application/gzip",
    Compression.ZSTD: "application/zstd",
}
# One range, written three ways: a-b, a- and -n (RFC 9110 §14.1.2).
SINGLE_RANGE_RE = re.compile(r"\A\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.IGNORECASE)
# A version's row is re-read this often when its file was swapped under us.
OPEN_ATTEMPTS = 3


class RangeNotSatisfiable(Exception):
    """The requested range starts beyond the representation: answer 416."""


# --- Which version ----------------------------------------------------------------


def version_for_download(*, user: Actor, image_uuid: uuid.UUID | str, version: str) -> Version:
    """The version ``version`` ("latest" or a number) of an image ``user`` may read.

    ``image_uuid`` must already be a valid UUID. Raises ``ImageNotFound`` or
    ``VersionNotFound`` for an unknown image or version, and for an image the
    user may not read (never revealing that it exists).
    """
    image = Image.objects.filter(pk=image_uuid).first()
    if image is None or not rules.can_read_image(user, image):
        raise ImageNotFound()
    versions = Version.objects.filter(image=image)
    if version == "latest":
        found = versions.order_by("-number").first()
    else:
        found = versions.filter(number=int(version)).first()
    if found is None:
        raise VersionNotFound()
    found.image = image
    return found


# --- Which bytes ------------------------------------------------------------------


@dataclass
class Representation:
    """The bytes to send: ``size`` bytes in ``compression`` read from ``stream``.

    ``seekable`` streams are real files (ranges seek, sendfile applies);
    others are decoders, read from the start.
    """

    version: Version
    stream: BinaryIO
    size: int
    compression: str
    seekable: bool

    def close(self) -> None:
        self.stream.close()


def representation_open(version: Version, *, decompress: bool) -> Representation:
    """Open the stored file of ``version`` (as stored, or decoded to raw bytes).

    The file is opened before anything is sent, so a compression job swapping
    it afterwards cannot break this download. If the file was swapped between
    reading the row and opening it, the row is read again. Raises ``VersionNotFound`` if
    the version disappeared meanwhile.
    """
    stored = open_stored(version)
    compression = version.stored_compression
    if decompress and compression != Compression.NONE:
        stream = raw_reader(stored, compression)
        return Representation(version, stream, version.size, Compression.NONE, seekable=False)
    size = os.fstat(stored.fileno()).st_size
    return Representation(version, stored, size, compression, seekable=True)


def open_stored(version: Version) -> BinaryIO:
    storage = get_storage()
    for _ in range(OPEN_ATTEMPTS):
        try:
            return storage.open_read(version.image_id, version.number, version.stored_compression)
        except FileNotFoundError:
            fresh = Version.objects.filter(pk=version.pk).values("stored_compression").first()
            if fresh is None:
                raise VersionNotFound() from None
            version.stored_compression = fresh["stored_compression"]
    path = get_storage().version_path(version.image_id, version.number, version.stored_compression)
    logger.error("The file of version %s is missing: %s", version.pk, path)
    raise FileNotFoundError(path)


# --- How to describe them ---------------------------------------------------------


def etag_for(representation: Representation) -> str:
    """A strong ETag: the raw SHA-256, plus the compression and size of an encoded file.

    Two compressed files of the same raw bytes may differ (another library
    version, a recompression), so their size is part of the tag too.
    """
    tag = version_tag(representation.version)
    if representation.compression == Compression.NONE:
        return f'"{tag}"'
    return f'"{tag}.{representation.compression}.{representation.size}"'


def version_tag(version: Version) -> str:
    """What names a version's raw bytes in ETags: its SHA-256, or while a job computes it
    (a large upload's, for seconds) its row's id, which no other version ever gets."""
    return version.sha256 or f"version-{version.pk}"


def sha256_field(hexdigest: str) -> str:
    """An RFC 9530 digest field value: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hexdigest)).decode('ascii')}:"


def filename_for(representation: Representation) -> str:
    """``<name>-v<n>.img[.zst|.gz]``, safe as a single file name."""
    version = representation.version
    name = re.sub(r"[\x00-\x1f\x7f/\\]+", "_", version.image.name).strip(". ") or "image"
    return f"{name}-v{version.number}{SUFFIXES[representation.compression]}"


def content_type_for(representation: Representation) -> str:
    return CONTENT_TYPES[representation.compression]


# --- Ranges -----------------------------------------------------------------------


@dataclass(frozen=True)
class ByteRange:
    start: int
    length: int

    @property
    def end(self) -> int:
        """The last byte, inclusive, as in ``Content-Range``."""
        return self.start + self.length - 1


def range_parse(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for in ``header``, clipped to ``size``.

    None means "send everything" (200): no header, another unit, a malformed
    value, or several ranges (RFC 9110 §14.2 lets a server ignore Range; a
    multipart answer buys a disk image nothing). Raises RangeNotSatisfiable
    when the range starts at or beyond ``size`` or asks for a zero-length suffix.
    """
    match = SINGLE_RANGE_RE.match(header or "")
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        suffix = min(suffix, size)
        return ByteRange(size - suffix, suffix)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end - start + 1)


def range_select(
    range_header: str | None, if_range: str | None, size: int, etag: str
) -> ByteRange | None:
    """The range to answer with, honouring ``If-Range``.

    A Range under an ``If-Range`` that is not our current strong ETag (another
    tag, a weak one, or a date: we send no Last-Modified) is ignored, so a
    client resuming a file that changed gets the whole new one.
    """
    if if_range is not None and if_range.strip() != etag:
        return None
    return range_parse(range_header, size)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names our ETag (weak comparison, as RFC 9110 asks)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags


class RangeReader:
    """A file-like view of ``length`` bytes of ``stream`` starting at ``start``.

    For a real file it seeks once and exposes ``fileno()``: gunicorn's
    ``sendfile`` then starts at the file's current offset and sends
    ``Content-Length`` bytes, which is exactly the range, with no copy through
    Python. Any other server (or a decoder, which has no descriptor) reads it
    through ``read()``, which stops after ``length`` bytes; a decoder first
    discards the ``start`` bytes before the range, lazily, on the first read.
    """

    def __init__(self, representation: Representation, byte_range: ByteRange | None):
        self._stream = representation.stream
        self._seekable = representation.seekable
        start = byte_range.start if byte_range else 0
        self.remaining = byte_range.length if byte_range else representation.size
        self._skip = 0
        if self._seekable:
            self._stream.seek(start)
        else:
            self._skip = start

    def fileno(self) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("a decoded stream has no file descriptor")
        return self._stream.fileno()

    def read(self, size: int = -1) -> bytes:
        self._skip_ahead()
        if self.remaining <= 0:
            return b""
        wanted = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._stream.read(wanted)
        self.remaining -= len(data)
        return data

    def _skip_ahead(self) -> None:
        while self._skip:
            data = self._stream.read(min(self._skip, 1 << 20))
            if not data:
                break
            self._skip -= len(data)
        self._skip = 0

    def close(self) -> None:
        self._stream.close()
