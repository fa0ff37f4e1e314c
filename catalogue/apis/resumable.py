"""Resumable uploads over HTTP: draft-ietf-httpbis-resumable-upload, interop version 8.

* ``POST``/binary ``PUT /api/image/<uuid>`` with ``Upload-Complete: ?0`` and
  ``Upload-Draft-Interop-Version: 8`` creates an upload resource and answers ``201``
  with its URL in ``Location`` (gunicorn cannot send the draft's ``104`` interim
  answer, so a resumable upload starts with an empty or partial body);
  ``Upload-Complete: ?1`` is the plain single-request upload, unchanged.
* ``HEAD /api/uploads/<token>``: the acknowledged offset; ``GET``: the same as JSON.
* ``PATCH`` (``application/partial-upload``, ``Upload-Offset``, ``Upload-Complete``):
  append; with ``Upload-Complete: ?1`` the version is committed and the answer is a
  plain upload's (201 and the version).
* ``DELETE``: abandon. ``GET /api/uploads``: the user's unfinished uploads.

The wire protocol, with every status and error body, is in docs/uploads.md; the
service is :mod:`catalogue.services.uploads.resumable`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import unquote

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import rules as account_rules
from baas_site.created import LOCATION, location
from baas_site.errors import api_exception_handler
from baas_site.exceptions import DomainError
from catalogue.apis import uploads
from catalogue.exceptions import (
    BadUpload,
    TooManyUploads,
    UploadBusy,
    UploadCompleted,
    UploadLengthMismatch,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLarge,
)
from catalogue.models import Image, ResumableUpload, UploadState
from catalogue.services.uploads import resumable
from catalogue.services.uploads.resumable import INTEROP_VERSION

PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM = "https://iana.org/assignments/http-problem-types#"
SF_INTEGER = re.compile(r"^\s*(\d{1,15})\s*(;.*)?$")
SF_BOOLEAN = re.compile(r"^\s*\?([01])\s*(;.*)?$")


# --- Structured fields (RFC 9651), as far as these headers need them ------------------------


def _header_integer(meta: dict[str, Any], key: str, name: str) -> int | None:
    """A non-negative sf-integer header; None if absent; 400 if malformed."""
    value = meta.get(key)
    if value is None:
        return None
    match = SF_INTEGER.match(value)
    if match is None:
        raise BadUpload(f"{name} must be a non-negative integer, not {value!r}.")
    return int(match[1])


def _header_boolean(meta: dict[str, Any], key: str) -> bool | None:
    """An sf-boolean header (``?0``/``?1``); None if absent or malformed (the draft: ignored)."""
    match = SF_BOOLEAN.match(meta.get(key, ""))
    return None if match is None else match[1] == "1"


def _check_interop(meta: dict[str, Any], *, required: bool) -> None:
    version = meta.get("HTTP_UPLOAD_DRAFT_INTEROP_VERSION")
    if version is None and not required:
        return
    if version is None or version.strip() != str(INTEROP_VERSION):
        raise BadUpload(
            f"This server implements interop version {INTEROP_VERSION} of the resumable upload "
            f"draft: send Upload-Draft-Interop-Version: {INTEROP_VERSION}"
            + (f" (not {version.strip()!r})." if version is not None else ".")
        )


def is_resumable_creation(request: HttpRequest) -> bool:
    """An upload request that asks for an upload resource (``Upload-Complete: ?0``)."""
    return _header_boolean(request.META, "HTTP_UPLOAD_COMPLETE") is False


# --- Answers ---------------------------------------------------------------------------------


def upload_url(upload: ResumableUpload) -> str:
    return location("upload-detail", token=upload.token)


def _limit(upload: ResumableUpload | None) -> str:
    limit = f"max-size={resumable.max_size()}"
    if upload is not None and upload.state == UploadState.RECEIVING:
        seconds = int((upload.expires_at - timezone.now()).total_seconds())
        limit += f", max-age={max(seconds, 0)}"
    return limit


def _state_headers(upload: ResumableUpload) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Complete": "?1" if upload.state == UploadState.COMPLETE else "?0",
        "Upload-Limit": _limit(upload),
        "Upload-Draft-Interop-Version": str(INTEROP_VERSION),
        "Cache-Control": "no-store",
    }
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    if upload.state == UploadState.COMPLETE and upload.version is not None:
        headers["Content-Location"] = location(
            "image-download", image_uuid=upload.image_id, number=upload.version.number
        )
    return headers


def upload_data(upload: ResumableUpload) -> dict[str, Any]:
    return {
        "upload": upload_url(upload),
        "image": str(upload.image_id),
        "state": upload.state,
        "offset": upload.offset,
        "length": upload.length,
        "complete": upload.state == UploadState.COMPLETE,
        "encoding": upload.encoding or None,
        "created": upload.created_at.isoformat(),
        "expires": upload.expires_at.isoformat(),
        "version": upload.version.number if upload.version is not None else None,
    }


def _current_offset(token: str) -> int | None:
    return ResumableUpload.objects.filter(token=token).values_list("offset", flat=True).first()


def _problem(exc: DomainError) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """Status, body members and headers of the draft's own refusals; None for the others."""
    if isinstance(exc, UploadOffsetMismatch):
        members = {
            "type": PROBLEM + "mismatching-upload-offset",
            "expected-offset": exc.expected,
            "provided-offset": exc.provided,
        }
        return status.HTTP_409_CONFLICT, members, {"Upload-Offset": str(exc.expected)}
    if isinstance(exc, UploadBusy):
        headers = {"Upload-Offset": str(exc.offset), "Retry-After": str(exc.retry_after)}
        return status.HTTP_409_CONFLICT, {}, headers
    if isinstance(exc, UploadCompleted):
        return status.HTTP_400_BAD_REQUEST, {"type": PROBLEM + "completed-upload"}, {}
    if isinstance(exc, UploadLengthMismatch):
        return status.HTTP_400_BAD_REQUEST, {"type": PROBLEM + "inconsistent-upload-length"}, {}
    if isinstance(exc, UploadNotFound):
        return (
            status.HTTP_404_NOT_FOUND,
            {"state": exc.state, exc.state: exc.at} if exc.state else {},
            {},
        )
    if isinstance(exc, TooManyUploads):
        urls = [location("upload-detail", token=token) for token in exc.tokens]
        return status.HTTP_409_CONFLICT, {"uploads": urls}, {}
    return None


def _error(view: APIView, exc: DomainError, token: str | None = None) -> Response:
    """The answer to a refusal, with the draft's headers and problem members."""
    headers = {"Upload-Draft-Interop-Version": str(INTEROP_VERSION), "Cache-Control": "no-store"}
    problem = _problem(exc)
    if problem is not None:
        code, members, more = problem
        body: Any = {"detail": str(exc), **members}
        headers |= more
    else:
        response = api_exception_handler(exc, view.get_exception_handler_context())
        assert response is not None  # a domain error always has an answer
        code, body = response.status_code, response.data
        if response.has_header("Retry-After"):
            headers["Retry-After"] = response["Retry-After"]
    if isinstance(exc, UploadTooLarge):
        headers["Upload-Limit"] = _limit(None)
    if token and "Upload-Offset" not in headers and not isinstance(exc, UploadNotFound):
        offset = _current_offset(token)
        if offset is not None:
            headers["Upload-Offset"] = str(offset)
    return Response(body, status=code, headers=headers)


def _version_created(upload: ResumableUpload, version: Any) -> Response:
    from catalogue.apis.images import version_created_response  # the plain upload's answer

    response = version_created_response(version)
    response["Upload-Complete"] = "?1"
    response["Upload-Draft-Interop-Version"] = str(INTEROP_VERSION)
    return response


def _body_read(request: HttpRequest) -> Any:
    """The body's ``read``, or None when the request has none."""
    length = request.META.get("CONTENT_LENGTH")
    if length in (None, "") and not request.META.get("wsgi.input_terminated"):
        return None
    if length == "0":
        return None
    return uploads.BodyReader(request).read


# --- Creation (from ImageDetailApi.post) -------------------------------------------------


def create(request: Request, image: Image) -> Response:
    """Create an upload resource for ``image``'s next version from this upload request."""
    django_request = request._request
    meta = django_request.META
    try:
        _check_interop(meta, required=True)
        if account_rules.is_agent(request.user):
            raise BadUpload("An agent sends its upload in one request, not as a resumable one.")
        if uploads._media_type(django_request) in ("multipart/form-data", PARTIAL_UPLOAD):
            raise UnsupportedMediaType(
                uploads._media_type(django_request),
                detail="A resumable upload sends the image as the raw body (raw, zstd, gzip "
                "or an Android sparse image), not a multipart form.",
            )
        upload = resumable.resumable_create(
            actor=request.user,
            image=image,
            encoding=uploads.declared_encoding(meta),
            length=_header_integer(meta, "HTTP_UPLOAD_LENGTH", "Upload-Length"),
            expected_sha256=uploads.header_digest(meta),
            want_digest=uploads.wants_digest(meta),
            note=unquote(meta.get("HTTP_BAAS_NOTE", "")),
        )
    except DomainError as exc:
        return _error(request.parser_context["view"], exc)
    read = _body_read(django_request)
    if read is not None:
        try:
            upload, _ = resumable.resumable_append(
                actor=request.user, token=upload.token, offset=0, complete=False, read=read
            )
        except DomainError as exc:
            return _error(request.parser_context["view"], exc, upload.token)
    headers = _state_headers(upload)
    headers["Location"] = upload_url(upload)
    return Response(upload_data(upload), status=status.HTTP_201_CREATED, headers=headers)


# --- The upload resource -------------------------------------------------------------------


class UploadOutputSerializer(serializers.Serializer):
    """What ``upload_data`` answers (the schema's description of it)."""

    upload = serializers.CharField(help_text="The upload's URL: HEAD, PATCH, DELETE it.")
    image = serializers.UUIDField()
    state = serializers.ChoiceField(choices=UploadState.choices)
    offset = serializers.IntegerField(help_text="Bytes received and kept, as sent.")
    length = serializers.IntegerField(allow_null=True, help_text="Upload-Length, if announced.")
    complete = serializers.BooleanField()
    encoding = serializers.CharField(allow_null=True)
    created = serializers.DateTimeField()
    expires = serializers.DateTimeField()
    version = serializers.IntegerField(allow_null=True, help_text="The version it became.")


class UploadListOutputSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = UploadOutputSerializer(many=True)


ERROR = inline_serializer("UploadError", {"detail": serializers.CharField()})


class UploadListApi(APIView):
    """Your unfinished resumable uploads (``?image=<uuid>`` for one image's)."""

    @extend_schema(
        summary="Your unfinished resumable uploads",
        operation_id="uploads_list",
        responses={200: UploadListOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        image_id = request.query_params.get("image")
        try:
            image_id = str(uuid.UUID(image_id)) if image_id else None
        except ValueError:
            return Response({"count": 0, "next": None, "previous": None, "results": []})
        found = list(resumable.resumable_list(actor=request.user, image_id=image_id))
        results = [upload_data(upload) for upload in found]
        return Response({"count": len(results), "next": None, "previous": None, "results": results})


class UploadDetailApi(APIView):
    """An upload resource: HEAD its offset, GET its state, PATCH to append, DELETE."""

    def get_parsers(self) -> list[BaseParser]:
        return [uploads.UnreadBodyParser()]

    @extend_schema(
        summary="The state of a resumable upload",
        responses={200: UploadOutputSerializer, 404: ERROR},
    )
    def get(self, request: Request, token: str) -> Response:
        try:
            upload = resumable.resumable_probe(actor=request.user, token=token)
        except DomainError as exc:
            return _error(self, exc)
        return Response(upload_data(upload), headers=_state_headers(upload))

    def head(self, request: Request, token: str) -> Response | HttpResponse:
        try:
            upload = resumable.resumable_probe(actor=request.user, token=token)
        except DomainError as exc:
            error = _error(self, exc)
            # A HEAD answer has no body (GET tells why), but the headers GET would have.
            response = HttpResponse(status=error.status_code, content_type="application/json")
            for name, value in error.items():
                if name.lower() != "content-type":
                    response[name] = value
            return response
        return Response(status=status.HTTP_204_NO_CONTENT, headers=_state_headers(upload))

    @extend_schema(
        summary="Append to a resumable upload (application/partial-upload)",
        request={"application/partial-upload": bytes},
        parameters=[LOCATION],
        responses={
            201: OpenApiResponse(description="Complete: the new version, as a plain upload's 201."),
            204: None,
            400: ERROR,
            404: ERROR,
            409: ERROR,
        },
    )
    def patch(self, request: Request, token: str) -> Response:
        django_request = request._request
        meta = django_request.META
        try:
            _check_interop(meta, required=False)
            if uploads._media_type(django_request) != PARTIAL_UPLOAD:
                raise UnsupportedMediaType(
                    uploads._media_type(django_request),
                    detail=f"Append with Content-Type: {PARTIAL_UPLOAD} (the draft's media type).",
                )
            offset = _header_integer(meta, "HTTP_UPLOAD_OFFSET", "Upload-Offset")
            complete = _header_boolean(meta, "HTTP_UPLOAD_COMPLETE")
            if offset is None or complete is None:
                raise BadUpload("An append needs Upload-Offset: <n> and Upload-Complete: ?0 or ?1.")
            read = _body_read(django_request) or (lambda size: b"")
            upload, version = resumable.resumable_append(
                actor=request.user, token=token, offset=offset, complete=complete, read=read
            )
        except DomainError as exc:
            response = _error(self, exc, token)
            if _finished(token):  # refused once complete: the draft's marker of that
                response["Upload-Complete"] = "?1"
            return response
        if version is not None:
            return _version_created(upload, version)
        return Response(status=status.HTTP_204_NO_CONTENT, headers=_state_headers(upload))

    @extend_schema(
        summary="Abandon a resumable upload", responses={204: None, 404: ERROR, 409: ERROR}
    )
    def delete(self, request: Request, token: str) -> Response:
        try:
            resumable.resumable_abandon(actor=request.user, token=token)
        except DomainError as exc:
            return _error(self, exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _finished(token: str) -> bool:
    state = ResumableUpload.objects.filter(token=token).values_list("state", flat=True).first()
    return state in (UploadState.COMPLETE, UploadState.FAILED)
