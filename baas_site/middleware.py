"""Under ``/api/``, every failure answers JSON with a plain message, even with DEBUG on.

Django answers an unhandled exception with its HTML debug page when DEBUG is
on (and with ``handler500`` when off); DRF's exception handler sees only the
exceptions raised inside its views. This middleware covers the rest:

- an exception a view lets through becomes JSON 500 with a logged reference
  (:func:`baas_site.errors.api_server_error`);
- any other HTML error answer under ``/api/`` (an exception in another
  middleware, Django's technical 404 or 400 pages) is replaced by JSON with the
  same status and a plain message.

Exceptions Django turns into 4xx answers itself (404, 403, 400) are left to
it, then their HTML, if any, is replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError

from baas_site.errors import api_server_error, is_api

# What Django itself answers with a 4xx (django.core.handlers.exception).
CLIENT_ERRORS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation, MultiPartParserError)
MESSAGES = {
    400: "The request is malformed.",
    403: "You are not allowed to do this.",
    404: "Not found.",
    405: "This method is not allowed here.",
    413: "The request is too large.",
}


class ApiErrorMiddleware:
    """Keep HTML and tracebacks out of the API's error answers (see the module's docstring)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if is_api(request) and response.status_code >= 400 and _is_html(response):
            return _as_json(request, response)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if not is_api(request) or isinstance(exception, CLIENT_ERRORS):
            return None
        return api_server_error(request, exception)


def _is_html(response: HttpResponseBase) -> bool:
    content_type = response.get("Content-Type", "")
    return content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _as_json(request: HttpRequest, response: HttpResponseBase) -> JsonResponse:
    status = response.status_code
    if status >= 500:
        answer = api_server_error(request)
        answer.status_code = status
        return answer
    try:
        message = MESSAGES.get(status) or f"{HTTPStatus(status).phrase}."
    except ValueError:
        message = "The request failed."
    return JsonResponse({"detail": message}, status=status)
