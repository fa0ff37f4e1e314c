"""Errors as JSON with a message a person can act on, and domain errors translated once.

Services raise the domain errors of ``baas_site.exceptions`` (each app's own in
``<app>/exceptions.py``). This module is the one place that says what each
kind means on the web: ``HTTP_STATUS`` for the API (through DRF's exception
handler, so a domain error answers exactly as the DRF exception it stands for,
``Retry-After`` included), ``error_text`` for a page or an admin message, and
``DomainErrorMiddleware`` for pages that let one through (404 and 403 pages).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from baas_site import exceptions as domain

# The translation table: each kind of domain error and its HTTP status.
HTTP_STATUS: dict[type[domain.DomainError], int] = {
    domain.Invalid: 400,  # with the per-field messages in ``errors``
    domain.Unusable: 400,
    domain.NotAuthenticated: 401,
    domain.Forbidden: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.Gone: 410,
    domain.LengthRequired: 411,
    domain.TooLarge: 413,
    domain.TooManyAttempts: 429,
    domain.StorageFull: 507,
}


def http_status(exc: domain.DomainError) -> int:
    """The status of ``exc``'s kind (the nearest kind in the table); 400 if it has none."""
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 400


class _Translated(exceptions.APIException):
    """A domain error as DRF sees it: the same detail and code, its kind's status."""

    def __init__(self, exc: domain.DomainError) -> None:
        self.status_code = http_status(exc)
        super().__init__(exc.detail, exc.code)
        if exc.retry_after is not None:
            self.wait = exc.retry_after  # DRF's handler sends it as Retry-After


def api_exception(
    exc: domain.DomainError, context: dict[str, Any] | None = None
) -> exceptions.APIException:
    """The DRF exception that answers ``exc``: DRF's own classes where DRF treats one specially.

    ``Invalid`` becomes DRF's ``ValidationError`` (whose body the handler below
    summarises). ``NotAuthenticated`` answers as DRF answers a failed
    authentication: 401 with the view's ``WWW-Authenticate``, or 403 when the
    view names no scheme. The others keep their detail (a dict stays the body).
    """
    if isinstance(exc, domain.Invalid):
        return exceptions.ValidationError(exc.detail, exc.code)
    if isinstance(exc, domain.NotAuthenticated):
        return _authentication_failed(exc, context or {})
    return _Translated(exc)


def _authentication_failed(
    exc: domain.NotAuthenticated, context: dict[str, Any]
) -> exceptions.APIException:
    failed = exceptions.AuthenticationFailed(exc.detail, exc.code)
    view, request = context.get("view"), context.get("request")
    header = view.get_authenticate_header(request) if view and request else None
    if header:
        failed.auth_header = header  # type: ignore[attr-defined]
    else:
        failed.status_code = 403
    return failed


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
    """Every message in an error's ``detail`` (a string, list or dict of them), flattened."""
    return domain.messages_of(detail)


def error_text(exc: domain.DomainError | exceptions.APIException) -> str:
    """A service's refusal as sentences for a page or an admin message."""
    return " ".join(error_messages(exc.detail))


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, for domain errors too, with validation errors summarised in ``detail``.

    Every error body has ``detail`` (one readable sentence); validation errors
    also carry ``errors``, the per-field messages.
    """
    if isinstance(exc, domain.DomainError):
        exc = api_exception(exc, context)
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


class DomainErrorMiddleware:
    """A domain error that escapes a page view answers as Django's own would.

    ``NotFound`` is the 404 page (JSON under ``/api/``), ``Forbidden`` the 403
    page; pages that can say more catch the error and show ``error_text``. DRF
    views never get here: their handler above answers first.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, domain.NotFound):
            raise Http404(str(exc)) from exc
        if isinstance(exc, domain.Forbidden):
            raise DjangoPermissionDenied(str(exc)) from exc
        if isinstance(exc, domain.DomainError) and is_api(request):
            response = JsonResponse({"detail": error_text(exc)}, status=http_status(exc))
            if exc.retry_after is not None:
                response["Retry-After"] = str(exc.retry_after)
            return response
        return None
