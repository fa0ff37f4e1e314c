"""201 answers and their ``Location``: the URL of what the request created.

Every operation that creates something answers 201 with the new thing in the
body and its URL in ``Location`` (relative to the server, as the upload's has
always been), documented in the schema by ``LOCATION``.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.response import Response

LOCATION = OpenApiParameter(
    "Location",
    str,
    OpenApiParameter.HEADER,
    response=[201],
    description="The URL of what was created",
)


def location(url_name: str, **kwargs: Any) -> str:
    """The path of the API's ``url_name`` for these URL arguments."""
    return reverse(url_name, kwargs={name: str(value) for name, value in kwargs.items()})


def created(data: Any, url_name: str, **kwargs: Any) -> Response:
    """201 with ``data``, and ``Location`` the URL ``url_name`` gives for ``kwargs``."""
    return Response(
        data,
        status=status.HTTP_201_CREATED,
        headers={"Location": location(url_name, **kwargs)},
    )
