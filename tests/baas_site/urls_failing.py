"""BAAS's URLs plus routes that fail the way real bugs do (for the error-answer tests)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from baas_site.urls import handler404, handler500
from baas_site.urls import urlpatterns as baas_urlpatterns

__all__ = ["handler404", "handler500", "urlpatterns"]


@api_view(["GET"])
@permission_classes([AllowAny])
def drf_key_error(request: Request) -> Response:
    """An API view with the bug of issue 16: a missing key in a dict."""
    return Response({"mount": {}["mount"]})


def django_view_error(request: HttpRequest) -> HttpResponse:
    """A plain Django view (like the file downloads) that fails."""
    raise RuntimeError("disk on fire\nTraceback (most recent call last):")


urlpatterns = [
    path("api/test/drf-key-error", drf_key_error),
    path("api/test/django-error", django_view_error),
    path("images/test/django-error", django_view_error),
    *baas_urlpatterns,
]
