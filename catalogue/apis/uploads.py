"""The HTTP side of uploads: the request body read as it streams, never buffered.

Django would parse a multipart body into temporary files (on another
filesystem) and a form body into memory. Upload requests therefore skip
Django's parsing entirely (``prepare_streaming``): the body is read here in
1 MiB chunks — straight from the WSGI input, honouring ``Content-Length`` —
and each chunk goes to a :class:`~catalogue.services.uploads.VersionReceiver`.
A multipart body goes through Django's ``MultiPartParser`` with an upload
handler that hands each chunk of the ``file`` field on the same way.

Accepted forms:

* ``multipart/form-data`` with the field ``file`` (``curl -F file=@disk.img``)
  and optionally ``sha256`` (hex);
* any other body as the image itself (``curl -T disk.img`` — a PUT —, or
  ``curl --data-binary @disk.img -H 'Content-Type: application/octet-stream'``).

Compression is taken from ``Content-Encoding`` (zstd, gzip), a
``Content-Type`` of ``application/zstd``/``application/gzip``, a file name
ending in ``.zst``/``.gz``, or else recognised from the first bytes. So is an
Android sparse image (``img2simg``'s format, a raw image without its holes:
``Content-Type: application/vnd.android.sparse-image``, a ``.simg`` file). The
expected digest comes from ``Content-Digest``/``Repr-Digest``
(``sha-256=:<base64>:``, RFC 9530) or the form field ``sha256``; it may be
the digest of the bytes as sent or of the raw image.

The whole-image SHA-256 of an upload larger than
``BAAS_UPLOAD_INLINE_SHA256_MAX`` is recorded by a background job after the
answer (``catalogue.services.digests``), unless the client sent a digest or
asked for one (``Want-Repr-Digest: sha-256=1``, RFC 9530): then the answer
waits for it and carries it in ``Repr-Digest``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import socket
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import HttpRequest, QueryDict, UnreadablePostError
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.utils.datastructures import MultiValueDict
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.parsers import BaseParser, DataAndFiles
from rest_framework.request import Request

from accounts import rules
from catalogue.exceptions import BadUpload, ClientDisconnected, LengthRequired, UploadTooLarge
from catalogue.models import Image, ImageType, Version
from catalogue.services.uploads import VersionReceiver, compose, version_upload
from diskimage import CHUNK
from diskimage import sparse as sparseimage
from diskimage.decoders import SPARSE

# Room for multipart boundaries and fields, and for compression that does not compress.
ENVELOPE = 1 << 20
CONTENT_ENCODINGS = {"zstd": "zstd", "gzip": "gzip", "x-gzip": "gzip", "identity": "none"}
CONTENT_TYPES = {
    "application/zstd": "zstd",
    "application/x-zstd": "zstd",
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    sparseimage.MEDIA_TYPE: SPARSE,
}
FILE_SUFFIXES = {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip"}
FILE_SUFFIXES.update(dict.fromkeys(sparseimage.FILE_SUFFIXES, SPARSE))
# Bodies of a PUT that are an image, not JSON metadata.
BINARY_TYPES = {"", "application/octet-stream", *CONTENT_TYPES}
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}\Z")
DIGEST_MEMBER = re.compile(r"^\s*([A-Za-z0-9_.*-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")


# --- Which requests ----------------------------------------------------------------


def _media_type(request: HttpRequest) -> str:
    content_type: str = request.META.get("CONTENT_TYPE", "")
    return content_type.split(";")[0].strip().lower()


def is_upload(request: HttpRequest) -> bool:
    """POST to an image always uploads; a PUT does when its body is binary, not metadata."""
    if request.method == "POST":
        return True
    return request.method == "PUT" and (
        _media_type(request) in BINARY_TYPES or "HTTP_CONTENT_ENCODING" in request.META
    )


class UnreadBodyParser(BaseParser):
    """Leaves an upload's body unread, for the view to stream it into a receiver.

    DRF parses a body when something asks for ``request.data`` or
    ``request.POST``, as the CSRF check of a session-authenticated request
    does: its multipart and form parsers would read the whole image into
    memory or temporary files first. The upload view uses this parser alone
    (``get_parsers``), so the data is empty and the body stays on the socket;
    DRF then hands the empty form to Django's request too. A
    session-authenticated upload carries its CSRF token in the
    ``X-CSRFToken`` header, which is how the dashboard sends it.
    """

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> DataAndFiles:
        return DataAndFiles(QueryDict(), MultiValueDict())


# --- Reading the body ----------------------------------------------------------------


class BodyReader:
    """The request body, read in chunks; a short body raises ClientDisconnected.

    With ``Content-Length``, exactly that many bytes are read (Django's
    ``LimitedStream``). Without one, a server that decodes chunked bodies
    (gunicorn sets ``wsgi.input_terminated``) is read to its end; other
    servers would hang, so that is 411.
    """

    def __init__(self, request: HttpRequest):
        self.length = _content_length(request.META)
        if self.length is None and not request.META.get("wsgi.input_terminated"):
            raise LengthRequired()
        self._source = request if self.length is not None else request.META["wsgi.input"]
        if self.length is not None and settings.BAAS_UPLOAD_READ_SOCKET:
            self._source = GunicornSocketBody.wrap(request.META["wsgi.input"]) or self._source
        self.received = 0

    def read(self, size: int | None = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        if self.length is not None:
            size = min(size, self.length - self.received)
            if size <= 0:
                return b""
        try:
            data = self._source.read(size)
        except (OSError, UnreadablePostError) as exc:
            raise ClientDisconnected() from exc
        if not data and self.length is not None:
            raise ClientDisconnected()
        self.received += len(data)
        return data


class GunicornSocketBody:
    """A gunicorn request body of known length, read straight from its socket.

    gunicorn's ``wsgi.input`` passes every byte through two ``BytesIO``
    buffers — about six copies of each chunk, which cap a gthread worker near
    1.5 GB/s, under half of what one ``recv(MSG_WAITALL)`` into a fresh
    ``bytes`` gives. This reads what gunicorn already buffered through
    gunicorn, then the rest from the socket, and keeps gunicorn's count of the
    unread body (``LengthReader.length``) exact, so keep-alive and the
    discarding of an unread rest work as before. Anything else (another
    server, another gunicorn, TLS, chunked bodies, BAAS_UPLOAD_READ_SOCKET
    off) keeps the WSGI stream. The tests check it against the gunicorn
    pinned in constraints.txt and fail when its private classes change.
    """

    def __init__(self, body: Any):
        self._body = body
        self._reader = body.reader
        self._unreader = body.reader.unreader
        self._sock: socket.socket = body.reader.unreader.sock

    @classmethod
    def wrap(cls, body: Any) -> GunicornSocketBody | None:
        reader = getattr(body, "reader", None)
        unreader = getattr(reader, "unreader", None)
        sock = getattr(unreader, "sock", None)
        known = (
            type(body).__module__ == "gunicorn.http.body"
            and type(body).__name__ == "Body"
            and type(reader).__name__ == "LengthReader"
            and type(unreader).__name__ == "SocketUnreader"
            and isinstance(getattr(body, "buf", None), io.BytesIO)
            and isinstance(getattr(unreader, "buf", None), io.BytesIO)
            and isinstance(getattr(reader, "length", None), int)
        )
        if not known or type(sock) is not socket.socket or sock.gettimeout() is not None:
            return None
        return cls(body)

    def read(self, size: int) -> bytes:
        held = self._held()
        if held:  # gunicorn's own path, never asking it for more than it holds
            buffered: bytes = self._body.read(min(size, held))
            return buffered
        size = min(size, self._reader.length)
        if size <= 0:
            return b""
        try:
            data = self._recv(size)
        except BaseException:
            self._body.failed = True  # where the next request starts is unknown now
            raise
        self._reader.length -= len(data)
        return data

    def _held(self) -> int:
        """Bytes of this body that gunicorn has already received and buffered."""
        in_unreader = self._unreader.buf.seek(0, os.SEEK_END)  # Unreader.read seeks there too
        held: int = self._body.buf.tell() + min(in_unreader, self._reader.length)
        return held

    def _recv(self, size: int) -> bytes:
        data = self._sock.recv(size, socket.MSG_WAITALL)
        if len(data) == size or not data:
            return data
        parts = [data]  # a signal or the peer closing cut the wait short
        while size > (got := sum(map(len, parts))) and (more := self._sock.recv(size - got)):
            parts.append(more)
        return b"".join(parts)


def _content_length(meta: dict[str, Any]) -> int | None:
    value = meta.get("CONTENT_LENGTH")
    if value is None or value == "":
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadUpload("Content-Length is not a number.") from None
    if length < 0:
        raise BadUpload("Content-Length is negative.")
    return length


# --- Headers ----------------------------------------------------------------------


def declared_encoding(meta: dict[str, Any]) -> str | None:
    """The compression the headers declare; None when they say nothing. 415 if unsupported."""
    codings = [c.strip().lower() for c in meta.get("HTTP_CONTENT_ENCODING", "").split(",")]
    codings = [c for c in codings if c]
    if codings:
        known = [CONTENT_ENCODINGS.get(c) for c in codings]
        real = [c for c in known if c != "none"]
        if None in known or len(real) > 1:
            raise UnsupportedMediaType(
                meta["HTTP_CONTENT_ENCODING"],
                detail=f"Content-Encoding {meta['HTTP_CONTENT_ENCODING']!r} is not supported: "
                "send zstd, gzip, or the raw image.",
            )
        return real[0] if real else "none"
    return CONTENT_TYPES.get(meta.get("CONTENT_TYPE", "").split(";")[0].strip().lower())


def file_encoding(file_name: str | None, content_type: str | None) -> str | None:
    """The compression a multipart file's name or type declares; None when they say nothing."""
    name = (file_name or "").lower()
    for suffix, encoding in FILE_SUFFIXES.items():
        if name.endswith(suffix):
            return encoding
    return CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())


def header_digest(meta: dict[str, Any]) -> str | None:
    """The hex SHA-256 from ``Content-Digest`` (or ``Repr-Digest``), RFC 9530; 400 if malformed.

    Other algorithms in the header are ignored, as the RFC allows.
    """
    for key in ("HTTP_CONTENT_DIGEST", "HTTP_REPR_DIGEST"):
        for member in meta.get(key, "").split(","):
            if not member.strip():
                continue
            match = DIGEST_MEMBER.match(member)
            if match is None:
                raise BadUpload(f"Malformed {key[5:].replace('_', '-').title()}: {member.strip()}")
            if match[1].lower() == "sha-256":
                return _sha256_from_base64(match[2])
    return None


def wants_digest(meta: dict[str, Any]) -> bool:
    """Whether ``Want-Repr-Digest``/``Want-Content-Digest`` asks for sha-256 (RFC 9530)."""
    for key in ("HTTP_WANT_REPR_DIGEST", "HTTP_WANT_CONTENT_DIGEST"):
        for member in meta.get(key, "").split(","):
            name, _, preference = member.strip().partition("=")
            if name.strip().lower() == "sha-256" and preference.strip() != "0":
                return True
    return False


def _sha256_from_base64(value: str) -> str:
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != 32:
        raise BadUpload("The sha-256 digest must be 32 bytes in base64, between colons.")
    return digest.hex()


def form_digest(value: str | None) -> str | None:
    if not value:
        return None
    if not SHA256_HEX.match(value.strip()):
        raise BadUpload("sha256: give the SHA-256 as 64 hexadecimal digits.")
    return value.strip().lower()


# --- Multipart -------------------------------------------------------------------------


class ReceiverUploadHandler(FileUploadHandler):
    """Hands the chunks of the multipart field ``file`` to a receiver; skips other files."""

    chunk_size = CHUNK

    def __init__(self, receiver: VersionReceiver):
        super().__init__()
        self.receiver = receiver
        self.seen = False

    def new_file(self, field_name, file_name, content_type, content_length, *args, **kwargs):
        if field_name != "file" or self.seen:
            raise SkipFile()
        self.seen = True
        self.receiver.declare_encoding(file_encoding(file_name, content_type))

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.receiver.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> None:
        return None


def _receive_multipart(request: HttpRequest, body: BodyReader, receiver: VersionReceiver) -> dict:
    handler = ReceiverUploadHandler(receiver)
    meta = request.META
    if body.length is None:  # chunked: the parser only needs to know the body is not empty
        meta = {**meta, "CONTENT_LENGTH": str(settings.BAAS_MAX_IMAGE_SIZE)}
    try:
        # Django's parser only read()s its stream; its stubs ask for a whole IO[bytes].
        parser = MultiPartParser(meta, body, [handler], request.encoding)  # type: ignore[arg-type]
        fields, _files = parser.parse()
    except (MultiPartParserError, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent) as exc:
        raise BadUpload(f"The multipart body is malformed: {exc}") from exc
    if not handler.seen:
        raise BadUpload("Send the image in the multipart field 'file' (curl -F file=@disk.img).")
    return {"sha256": form_digest(fields.get("sha256")), "note": fields.get("note", "")[:500]}


def _receive_raw(request: HttpRequest, body: BodyReader, receiver: VersionReceiver) -> dict:
    receiver.declare_encoding(declared_encoding(request.META))
    while data := body.read(CHUNK):
        receiver.write(data)
    return {"sha256": None, "note": ""}


# --- The whole upload ------------------------------------------------------------------


def upload_version(request: Request, image: Image) -> Version:
    """Stream the request's body into ``image``'s next version and return it.

    The caller has checked that the user may write the image. Raises the
    catalogue's API errors (400, 411, 413, 415, 507); nothing is stored then.
    """
    django_request = request._request
    max_size = settings.BAAS_MAX_IMAGE_SIZE
    body = BodyReader(django_request)
    base = compose.delta_base_number(django_request.META.get("HTTP_UPLOAD_BASE_VERSION"))
    if base is not None:
        return _upload_delta(request, image, base, body)
    if body.length is not None and body.length > max_size + max_size // 128 + ENVELOPE:
        raise UploadTooLarge(
            f"The upload ({body.length} bytes) is larger than the {max_size}-byte limit."
        )
    expected = header_digest(django_request.META)
    multipart = _media_type(django_request) == "multipart/form-data"
    digest_now = (
        bool(expected)
        or wants_digest(django_request.META)
        or rules.is_agent(request.user)
        or image.type == ImageType.BOOT
    )
    receiver = VersionReceiver(
        image=image,
        max_size=max_size,
        digest=digest_now,
        wire_digest=bool(expected) or multipart,
        # Compressed or in a form, the image is still at least about as large as the body.
        raw_at_least=max(0, (body.length or 0) - ENVELOPE) * 99 // 100,
    )
    with receiver:
        if multipart:
            fields = _receive_multipart(django_request, body, receiver)
        else:
            fields = _receive_raw(django_request, body, receiver)
        return version_upload(
            actor=request.user,
            image=image,
            receiver=receiver,
            expected_sha256=expected or fields["sha256"],
            note=fields["note"],
        )


def _upload_delta(request: Request, image: Image, base_number: int, body: BodyReader) -> Version:
    """A delta upload (``Upload-Base-Version``): the changes against that version, as an
    Android sparse image whose "don't care" chunks mean "as in the base"
    (``catalogue.services.uploads.compose``)."""
    meta = request._request.META
    if _media_type(request._request) == "multipart/form-data":
        raise BadUpload("Send a delta as the request body itself, not in a form.")
    if declared_encoding(meta) not in (None, SPARSE):
        raise BadUpload(
            f"A delta is an Android sparse image ({sparseimage.MEDIA_TYPE}), sent as is."
        )
    expected = compose.map_digest_expected(meta.get("HTTP_UPLOAD_MAP_DIGEST"))
    base, base_map = compose.delta_base_get(actor=request.user, image=image, number=base_number)
    return compose.version_compose(
        actor=request.user,
        image=image,
        base=base,
        base_map=base_map,
        delta=iter(lambda: body.read(CHUNK), b""),
        expected_map=expected,
    )


def refuse_resumable_delta(request: HttpRequest) -> None:
    """A delta is composed as it arrives, in one request: never kept as a resumable upload
    (whose bytes would be stored as a whole image, its "as in the base" chunks as zeros)."""
    if "HTTP_UPLOAD_BASE_VERSION" in request.META:
        raise BadUpload(
            "A delta upload (Upload-Base-Version) is sent in one request, not as a resumable "
            "upload: send it without Upload-Complete: ?0."
        )
