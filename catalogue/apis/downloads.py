"""Downloading a version's bytes: ``GET /api/image/<uuid>/latest`` and ``…/<n>``.

The bytes go out as stored (``<n>.img``, ``.img.zst`` or ``.img.gz``) through
Django's FileResponse, which under gunicorn becomes ``wsgi.file_wrapper`` and
a zero-copy ``sendfile``; single byte ranges (``Range``, ``If-Range``) answer
206 so ``curl -C -`` resumes. ``?decompress=1`` streams the raw image decoded
on the fly (ranges work there too, by decoding and skipping up to the start).

``?format=raw`` asks for the disk the image describes: for a qcow2 version its
raw rendition (``catalogue.services.renditions``), also for its map and data
routes; 409 with Retry-After while it is being made, 409 with the reason if
it could not be made. On a raw image it is ``?decompress=1``.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import FileResponse, HttpResponse, HttpResponseBase
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalogue.apis.fields import DigestField
from catalogue.models import Version
from catalogue.services import (
    datalayout,
    datamaps,
    datastream,
    delivery,
    pipeline,
    rendition_delivery,
    renditions,
)
from catalogue.services.delivery import ByteRange, RangeNotSatisfiable, Representation
from catalogue.storage import get_storage

FORMAT_HELP = (
    "raw: the disk the image describes. For a qcow2 image, its raw rendition (made by "
    "qemu-img after the upload): 409 with Retry-After while it is being made, 409 with the "
    "reason if it could not be. For a raw image, the raw bytes (as with ?decompress=1)."
)


class FormatQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=["raw"], required=False, help_text=FORMAT_HELP)


class DownloadQuerySerializer(FormatQuerySerializer):
    decompress = serializers.BooleanField(
        default=False,
        help_text="Send the raw image, decoded on the fly, instead of the file as stored.",
    )


def _wants_raw_rendition(request: Request, version: Version) -> bool:
    """``?format=raw`` on a qcow2 version: its raw rendition is meant, not its file."""
    query = FormatQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data.get("format") == "raw" and renditions.is_qcow2(version)


class ErrorOutputSerializer(serializers.Serializer):
    detail = serializers.CharField()


class ImageFileResponse(FileResponse):
    # Used only where sendfile is not (another server, a decoder): big reads.
    block_size = 1 << 20


def _binary(description: str) -> OpenApiResponse:
    return OpenApiResponse(OpenApiTypes.BINARY, description=description)


def _header(name: str, description: str, codes: list[int]) -> OpenApiParameter:
    return OpenApiParameter(
        name, str, OpenApiParameter.HEADER, description=description, response=codes
    )


DOWNLOAD_DESCRIPTION = (
    "The version's bytes as stored (raw, zstd or gzip; see Content-Type and the file name), "
    "or the raw image with ?decompress=1. Single byte ranges answer 206, so `curl -C -` "
    "resumes; a Range that starts past the end answers 416. The raw image's SHA-256 is in "
    "BAAS-Raw-Digest (and Repr-Digest when the body is raw)."
)
_WHOLE = "The whole file: as stored, or raw with ?decompress=1."
_PART = "One byte range of it, as asked by Range (and If-Range)."
_ERROR = OpenApiResponse(ErrorOutputSerializer)
DOWNLOAD_SCHEMA: dict[str, Any] = {
    "tags": ["images"],
    "parameters": [
        DownloadQuerySerializer,
        OpenApiParameter("image_uuid", OpenApiTypes.UUID, OpenApiParameter.PATH),
        _header("Range", "One range: bytes=a-b, bytes=a- or bytes=-n. Several: 200.", []),
        _header("If-Range", "Honour Range only while the ETag is still this one.", []),
        _header("If-None-Match", "Answer 304 while the ETag is still this one.", []),
        _header("ETag", "Strong: the raw SHA-256 (+ compression and size).", [200, 206, 304]),
        _header("Content-Range", "bytes a-b/size (206), bytes */size (416)", [206, 416]),
        _header("Accept-Ranges", "bytes", [200, 206]),
        _header("Content-Disposition", "attachment; filename=<name>-v<n>.img[.zst]", [200, 206]),
        _header("Repr-Digest", "sha-256=:…: of a raw representation (RFC 9530)", [200, 206]),
        _header("Content-Digest", "sha-256=:…: when the body is the raw image", [200]),
        _header("BAAS-Raw-Digest", "sha-256=:…: of the raw image, however it is sent", [200, 206]),
        _header("BAAS-Raw-Size", "Size in bytes of the raw image", [200, 206]),
    ],
    "responses": {
        (200, "application/octet-stream"): _binary(_WHOLE),
        (200, "application/zstd"): _binary(_WHOLE),
        (200, "application/gzip"): _binary(_WHOLE),
        (206, "application/octet-stream"): _binary(_PART),
        (206, "application/zstd"): _binary(_PART),
        (206, "application/gzip"): _binary(_PART),
        304: OpenApiResponse(description="Not modified: the ETag still matches."),
        400: _ERROR,
        401: _ERROR,
        404: OpenApiResponse(ErrorOutputSerializer, description="Unknown, or not yours."),
        409: OpenApiResponse(
            ErrorOutputSerializer,
            description="?format=raw on a qcow2 version whose raw disk is being made "
            "(Retry-After) or could not be made (the reason).",
        ),
        416: OpenApiResponse(ErrorOutputSerializer, description="The range starts past the end."),
    },
}


class _DownloadApi(APIView):
    """Shared by the two routes; the bytes bypass DRF's renderers, errors are JSON."""

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # "Accept: application/octet-stream" must not turn into 406: errors fall back to JSON.
        return super().perform_content_negotiation(request, force=True)

    def download(self, request: Request, image_uuid: str, version: str) -> HttpResponseBase:
        image_id = _parse_uuid(image_uuid)
        query = DownloadQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        found = delivery.version_for_download(
            user=request.user, image_uuid=image_id, version=version
        )
        raw = query.validated_data.get("format") == "raw"
        if raw and renditions.is_qcow2(found):
            representation = rendition_delivery.rendition_open(found)
            identity = (found.raw_sha256, representation.size)
        else:
            decompress = raw or query.validated_data["decompress"]
            representation = delivery.representation_open(found, decompress=decompress)
            identity = None
        try:
            return _respond(request, representation, identity)
        except BaseException:
            representation.close()
            raise


class LatestVersionDownloadApi(_DownloadApi):
    @extend_schema(
        operation_id="image_latest_download",
        summary="Download the latest version",
        description=DOWNLOAD_DESCRIPTION,
        **DOWNLOAD_SCHEMA,
    )
    def get(self, request: Request, image_uuid: str) -> HttpResponseBase:
        return self.download(request, image_uuid, "latest")


class VersionDownloadApi(_DownloadApi):
    @extend_schema(
        operation_id="image_version_download",
        summary="Download a version",
        description=DOWNLOAD_DESCRIPTION,
        **DOWNLOAD_SCHEMA,
    )
    def get(self, request: Request, image_uuid: str, number: int) -> HttpResponseBase:
        return self.download(request, image_uuid, str(number))


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError({"image_uuid": f"'{value}' is not a valid UUID."}) from None


def _respond(
    request: Request, representation: Representation, rendition: tuple[str, int] | None = None
) -> HttpResponseBase:
    """The answer for an open representation; it owns (and eventually closes) the stream.

    ``rendition``: the SHA-256 and size of the raw rendition it is (not the version's file).
    """
    etag = delivery.etag_for(representation) if rendition is None else f'"{rendition[0]}"'

    if delivery.etag_matches(request.headers.get("If-None-Match"), etag):
        representation.close()
        return _not_modified(etag)
    try:
        byte_range = delivery.range_select(
            request.headers.get("Range"), request.headers.get("If-Range"), representation.size, etag
        )
    except RangeNotSatisfiable:
        representation.close()
        return _not_satisfiable(representation.size)
    response = _body_response(request, representation, byte_range)
    for name, value in _headers(representation, etag, byte_range, rendition).items():
        response[name] = value
    return _front_server_sends(response, representation)


def _front_server_sends(
    response: HttpResponseBase, representation: Representation
) -> HttpResponseBase:
    """With ``BAAS_ACCEL_REDIRECT`` set, hand a stored file to the front server.

    Django has authorised the request and decided the answer (its status, range,
    ETag and headers, 304 and 416 included); nginx then sends the file itself
    with ``X-Accel-Redirect`` (its location re-adds our headers and judges
    ``Range``/``If-Range`` against our ETag: ``contrib/nginx/baas.conf.template``).
    Decoded streams (a decompressed download) are sent by Django as before.
    """
    prefix = settings.BAAS_ACCEL_REDIRECT
    if not prefix or not representation.seekable or not isinstance(response, FileResponse):
        return response
    try:
        name = get_storage().served_name(representation.stream)
    except ValueError:
        return response
    response.close()  # closes the representation: nginx opens the file by its name
    accel = HttpResponse(status=response.status_code, content_type=response["Content-Type"])
    for header, value in response.items():
        if header.lower() not in ("content-length", "content-type"):
            accel[header] = value
    accel["X-Accel-Redirect"] = prefix.rstrip("/") + "/" + quote(name)
    return accel


def _body_response(
    request: Request, representation: Representation, byte_range: ByteRange | None
) -> HttpResponseBase:
    code = status.HTTP_206_PARTIAL_CONTENT if byte_range else status.HTTP_200_OK
    content_type = delivery.content_type_for(representation)
    if request.method == "HEAD":
        representation.close()
        return HttpResponse(status=code, content_type=content_type)
    reader = delivery.RangeReader(representation, byte_range)
    return ImageFileResponse(reader, status=code, content_type=content_type)


def _attachment(filename: str) -> str:
    """``Content-Disposition`` for a download saved as ``filename`` (which is never empty)."""
    return content_disposition_header(True, filename) or "attachment"


def _headers(
    representation: Representation,
    etag: str,
    byte_range: ByteRange | None,
    rendition: tuple[str, int] | None = None,
) -> dict[str, str]:
    version = representation.version
    length = byte_range.length if byte_range else representation.size
    is_raw = representation.compression == "none"
    raw_sha256, raw_size = rendition or (version.sha256, version.size)
    headers = {
        "Content-Length": str(length),
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "Content-Disposition": _attachment(delivery.filename_for(representation)),
        "Content-Location": f"/api/image/{version.image_id}/{version.number}",
        "BAAS-Raw-Size": str(raw_size),
    }
    if rendition is not None:
        headers["Content-Disposition"] = _attachment(
            delivery.filename_for(representation).removesuffix(".img") + ".raw.img"
        )
    if raw_sha256:  # else a job computes it, seconds after a large upload
        headers["BAAS-Raw-Digest"] = delivery.sha256_field(raw_sha256)
    if is_raw and raw_sha256:
        raw_digest = headers["BAAS-Raw-Digest"]
        headers["Repr-Digest"] = raw_digest
        if length == representation.size:
            headers["Content-Digest"] = raw_digest
    if byte_range:
        headers["Content-Range"] = (
            f"bytes {byte_range.start}-{byte_range.end}/{representation.size}"
        )
    return headers


def _not_modified(etag: str) -> HttpResponse:
    response = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
    response["ETag"] = etag
    return response


def _not_satisfiable(size: int) -> Response:
    return Response(
        {"detail": f"The range starts past the end of the file ({size} bytes)."},
        status=status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE,
        headers={"Content-Range": f"bytes */{size}"},
    )


class DataMapOutputSerializer(serializers.Serializer):
    format = serializers.CharField(help_text="baas-datamap/1")
    block_size = serializers.IntegerField()
    size = serializers.IntegerField(help_text="Bytes in the raw image.")
    sha256 = DigestField(help_text="SHA-256 of the whole raw image (null while it is computed).")
    data_bytes = serializers.IntegerField(help_text="Bytes inside the ranges.")
    ranges = serializers.ListField(
        child=serializers.ListField(),
        help_text="[start, end, sha256] of each range holding data; everything else is zeros.",
    )


class VersionMapApi(APIView):
    """Where a version's data is, with a SHA-256 per range (what agents verify)."""

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # ?format=raw names the rendition, not one of DRF's renderers (which would be 404).
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="image_version_map",
        summary="A version's data map",
        description=(
            "The ranges of the raw image that hold data (4 KiB blocks that are not all zeros), "
            "each with the SHA-256 of its bytes; every byte outside them is zero. Agents use it "
            "to write, verify and compare only the data. 404 while it is being built (it is "
            "built at upload; older versions get theirs in the background)."
        ),
        tags=["images"],
        parameters=[
            FormatQuerySerializer,
            OpenApiParameter("image_uuid", OpenApiTypes.UUID, OpenApiParameter.PATH),
        ],
        responses={
            200: DataMapOutputSerializer,
            400: _ERROR,
            401: _ERROR,
            404: _ERROR,
            409: _ERROR,
        },
    )
    def get(self, request: Request, image_uuid: str, number: int) -> HttpResponseBase:
        found = delivery.version_for_download(
            user=request.user, image_uuid=_parse_uuid(image_uuid), version=str(number)
        )
        if _wants_raw_rendition(request, found):
            rendition_map = rendition_delivery.rendition_map(found)
            return HttpResponse(rendition_map.dumps(), content_type="application/json")
        datamap = datamaps.version_map(found)
        if datamap is None:
            pipeline.version_process(found.pk)  # which maps it
            return Response(
                {"detail": "This version's data map is being built; ask again in a minute."},
                status=status.HTTP_404_NOT_FOUND,
                headers={"Retry-After": "60"},
            )
        return HttpResponse(datamap.dumps(), content_type="application/json")


class VersionDataApi(APIView):
    """The bytes of a version's data ranges alone, in order (what agents write)."""

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="image_version_data",
        summary="A version's data, without its zeros",
        description=(
            "The bytes of the version's data map ranges, concatenated in order: a zstd stream "
            "(Content-Type application/zstd) when the version is stored zstd in frames, else the "
            "raw bytes. With the map, that is the whole image: every other byte is zero. Single "
            "byte ranges answer 206. 404 when the version has no such stream (stored gzip, or its "
            "map or frames are still being made): download the whole version instead."
        ),
        tags=["images"],
        parameters=[
            FormatQuerySerializer,
            OpenApiParameter("image_uuid", OpenApiTypes.UUID, OpenApiParameter.PATH),
            OpenApiParameter(
                "ranges",
                str,
                OpenApiParameter.QUERY,
                description="Only these ranges of the data map, by index, ascending: 1,4-6,9 "
                "(at most 3000 characters). 400 when malformed or past the map's end. An item "
                "i/a-b names 4 KiB blocks a to b of range i alone; with one, the answer is raw "
                "bytes (application/octet-stream) whatever the version's storage.",
            ),
            _header("Range", "One range: bytes=a-b, bytes=a- or bytes=-n.", []),
            _header("If-Range", "Honour Range only while the ETag is still this one.", []),
        ],
        responses={
            (200, "application/zstd"): _binary("The data ranges, zstd-compressed."),
            (200, "application/octet-stream"): _binary("The data ranges, raw."),
            (206, "application/zstd"): _binary(_PART),
            (206, "application/octet-stream"): _binary(_PART),
            400: _ERROR,
            401: _ERROR,
            404: _ERROR,
            409: _ERROR,
            416: _ERROR,
        },
    )
    def get(self, request: Request, image_uuid: str, number: int) -> HttpResponseBase:
        found = delivery.version_for_download(
            user=request.user, image_uuid=_parse_uuid(image_uuid), version=str(number)
        )
        if _wants_raw_rendition(request, found):
            stream: datastream.DataStream | None = rendition_delivery.rendition_data_open(found)
        else:
            stream = datastream.data_stream_open(found)
        if stream is None:
            return Response(
                {"detail": "This version has no data stream (yet): download the whole version."},
                status=status.HTTP_404_NOT_FOUND,
            )
        try:  # ?ranges=1,4-6: those ranges alone (a delta re-flash), in one answer
            stream = datalayout.data_stream_select(stream, request.query_params.get("ranges"))
        except ValueError as exc:
            stream.close()
            raise ValidationError({"ranges": [str(exc)]}) from None
        etag = stream.etag()
        try:
            byte_range = delivery.range_select(
                request.headers.get("Range"), request.headers.get("If-Range"), stream.size, etag
            )
        except RangeNotSatisfiable:
            stream.close()
            return _not_satisfiable(stream.size)
        code = status.HTTP_206_PARTIAL_CONTENT if byte_range else status.HTTP_200_OK
        response = ImageFileResponse(
            datastream.PiecesReader(stream, byte_range),
            status=code,
            content_type=delivery.CONTENT_TYPES[stream.compression],
        )
        response["Content-Length"] = str(byte_range.length if byte_range else stream.size)
        response["ETag"] = etag
        response["Accept-Ranges"] = "bytes"
        response["Cache-Control"] = "private, no-cache"
        if byte_range:
            response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{stream.size}"
        return response
