"""A middleware that fails before any view runs, for /api/test/middleware-error."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class FailingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/api/test/middleware-error":
            raise ValueError("session store unreachable")
        return self.get_response(request)
