"""Errors as JSON with a message a person can act on."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            message = _first_message(value)
            return message if field in ("non_field_errors", "detail") else f"{field}: {message}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


def error_messages(detail: Any) -> list[str]:
    """Every message in a DRF error ``detail`` (a string, list or dict of them), flattened."""
    if isinstance(detail, list | tuple):
        return [m for item in detail for m in error_messages(item)]
    if isinstance(detail, dict):
        return [m for value in detail.values() for m in error_messages(value)]
    return [str(detail)]


def error_text(exc: exceptions.APIException) -> str:
    """A service's refusal as sentences for a page or an admin message."""
    return " ".join(error_messages(exc.detail))


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with validation errors summarised in ``detail``.

    Every error body has ``detail`` (one readable sentence); validation errors
    also carry ``errors``, the per-field messages.
    """
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"detail": _first_message(exc.detail), "errors": response.data}
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 as JSON under ``/api/``, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


log = logging.getLogger("django.request")


def is_api(request: HttpRequest) -> bool:
    """Whether ``request`` is for the API, whose every answer is JSON."""
    return request.path.startswith("/api/")


def api_server_error(request: HttpRequest, exception: BaseException | None = None) -> JsonResponse:
    """The API's answer to a failure of its own: JSON 500, a plain message and a reference.

    The reference is logged with the request (and the exception's traceback,
    when given) so an administrator can find what happened; the answer never
    carries the traceback or an HTML page.
    """
    reference = uuid.uuid4().hex[:12]
    if exception is not None:
        log.error(
            "Internal Server Error: %s (reference %s)",
            request.path,
            reference,
            exc_info=(type(exception), exception, exception.__traceback__),
            extra={"status_code": 500, "request": request},
        )
    else:
        log.error("Internal Server Error: %s (reference %s, logged above)", request.path, reference)
    message = (
        f"The server failed to answer this request (reference {reference}). It has been "
        "logged; try again later, or give the reference to an administrator."
    )
    response = JsonResponse({"detail": message, "reference": reference}, status=500)
    response._has_been_logged = True  # type: ignore[attr-defined]  # not again by Django
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api(request):
        return api_server_error(request)
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)
