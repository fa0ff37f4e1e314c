"""``GET /api/image/<uuid>/<n>/hashes?ranges=…``: a version's block hashes, for delta uploads.

A client holding a disk that was flashed with version n — and not n's bytes —
asks which 4 KiB blocks of the ranges whose BLAKE3 no longer matches it
changed: the answer is HASH_BYTES of BLAKE3 per block of each range asked
for, concatenated, computed from the stored version (``diskimage.sparsedelta``).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from catalogue.apis.downloads import ErrorOutputSerializer
from catalogue.exceptions import VersionNotFound
from catalogue.services import datamaps, delivery
from catalogue.services.versionbytes import block_hashes_of
from diskimage import BLOCK
from diskimage.selection import parse_selection
from diskimage.sparsedelta import HASH_BYTES


class VersionHashesApi(APIView):
    """Block hashes of some ranges of a version's data map (what a delta upload compares)."""

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="image_version_hashes",
        summary="Block hashes of a version's data ranges",
        description=(
            f"For each range of the version's data map listed in ?ranges (indices, e.g. 0-3,7), "
            f"in order, the first {HASH_BYTES} bytes of the BLAKE3 of each of its {BLOCK}-byte "
            "blocks (the last block of a range may be shorter), concatenated. A client that "
            "holds a disk flashed with this version uses it to find the blocks it changed and "
            "send only those (a delta upload, Upload-Base-Version). 404 while the map is being "
            "built."
        ),
        tags=["images"],
        parameters=[
            OpenApiParameter("image_uuid", OpenApiTypes.UUID, OpenApiParameter.PATH),
            OpenApiParameter("ranges", OpenApiTypes.STR, OpenApiParameter.QUERY, required=True),
        ],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The block hashes, concatenated."
            ),
            400: ErrorOutputSerializer,
            401: ErrorOutputSerializer,
            404: ErrorOutputSerializer,
        },
    )
    def get(self, request: Request, image_uuid: str, number: int) -> HttpResponseBase:
        try:
            image_id = uuid.UUID(image_uuid)
        except ValueError:
            raise ValidationError({"image": ["Not a UUID."]}) from None
        found = delivery.version_for_download(
            user=request.user, image_uuid=image_id, version=str(number)
        )
        datamap = datamaps.version_map(found)
        if datamap is None:
            raise VersionNotFound("This version's data map is being built; ask again in a minute.")
        try:
            indices = parse_selection(request.query_params.get("ranges", ""), len(datamap.ranges))
        except ValueError as exc:
            raise ValidationError({"ranges": [str(exc)]}) from None
        blocks = sum(-(-(datamap.ranges[i][1] - datamap.ranges[i][0]) // BLOCK) for i in indices)
        response = StreamingHttpResponse(
            block_hashes_of(found, datamap, indices), content_type="application/octet-stream"
        )
        response["Content-Length"] = str(blocks * HASH_BYTES)
        response["Cache-Control"] = "private, no-cache"
        return response
