"""The API's schema and its documentation page, and who may read them.

In production (``DEBUG`` off) both need a signed-in user or a token, unless
``BAAS_PUBLIC_API_DOCS`` is true; in development they are public. The page is
Swagger UI from the sidecar package, served without any inline script so it
works under the site's Content-Security-Policy: the page loads its start-up
script from its own URL (``?script``), as drf-spectacular's split view does.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponseBase
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import exceptions
from rest_framework.request import Request

from accounts.permissions import TokenScopes


class DocsAccess(TokenScopes):
    """Anyone when ``BAAS_PUBLIC_API_DOCS`` is true; otherwise signed-in users and tokens
    (within their scopes)."""

    message = "Sign in (or send a token) to read the API's schema."

    def has_permission(self, request: Request, view: Any) -> bool:
        return settings.BAAS_PUBLIC_API_DOCS or super().has_permission(request, view)

    def allows(self, request: Request, view: Any) -> bool:
        return bool(request.user.is_authenticated)


class SchemaView(SpectacularAPIView):
    """``GET /api/schema/``: the OpenAPI document (401/403 JSON when it is not for you)."""

    permission_classes = [DocsAccess]


class DocsView(SpectacularSwaggerSplitView):
    """``GET /api/docs/``: Swagger UI; a person who is not signed in is sent to sign in."""

    permission_classes = [DocsAccess]
    template_name = "api/swagger_ui.html"

    # DRF takes any HttpResponseBase from here (``finalize_response`` checks for just that);
    # its stubs say Response, which a redirect to the sign-in page is not.
    def handle_exception(self, exc: Exception) -> HttpResponseBase:  # type: ignore[override]
        refused = isinstance(exc, exceptions.NotAuthenticated | exceptions.PermissionDenied)
        if refused and not self.request.user.is_authenticated:
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)
