"""API errors of the image catalogue, each with its HTTP status and a message to act on."""

from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import APIException


class ImageConflict(APIException):
    """The request contradicts the image's state (e.g. it is pinned in a setup)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "This conflicts with the image's current state."
    default_code = "conflict"


class BadUpload(APIException):
    """The uploaded bytes are wrong: not the image's format, corrupt, cut short, or mismatched."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The upload was refused."
    default_code = "bad_upload"


class ClientDisconnected(BadUpload):
    """The body ended before ``Content-Length`` bytes arrived."""

    default_detail = "The upload ended before all its bytes arrived; nothing was stored."
    default_code = "incomplete_upload"


class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The image is larger than this server accepts."
    default_code = "too_large"


class InsufficientStorage(APIException):
    status_code = status.HTTP_507_INSUFFICIENT_STORAGE
    default_detail = "The image store is full; nothing was stored. Ask an administrator."
    default_code = "storage_full"


class LengthRequired(APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = "Send the upload with a Content-Length (or chunked through gunicorn)."
    default_code = "length_required"
