"""Storage used by a user's images, against their quota: ``GET /api/user/<name>/usage``."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import user_get_managed
from catalogue.models import Image
from catalogue.selectors.usage import user_usage


class ImageUsageSerializer(serializers.ModelSerializer):
    storage_used = serializers.IntegerField(
        help_text="Bytes its versions take on disk, each counted whole (logical)"
    )
    storage_held = serializers.IntegerField(
        help_text="Bytes the disk actually holds for its versions: blocks that versions share "
        "(reflinks, on XFS or btrfs) counted once; equal to storage_used where nothing is shared"
    )
    versions = serializers.IntegerField(source="version_count", help_text="How many versions")

    class Meta:
        model = Image
        fields = [
            "uuid",
            "name",
            "type",
            "versions",
            "storage_used",
            "storage_held",
            "keep_versions",
            "expires_at",
        ]


class UsageOutputSerializer(serializers.Serializer):
    used = serializers.IntegerField(
        help_text="Bytes on disk taken by every image the user owns, each version counted "
        "whole (logical; what the quota counts)"
    )
    held = serializers.IntegerField(
        help_text="Bytes the disk actually holds for them: blocks shared by versions counted once"
    )
    quota = serializers.IntegerField(
        allow_null=True, help_text="Bytes the user's images may take; null: no limit"
    )
    images = ImageUsageSerializer(many=True)


class UserUsageApi(APIView):
    """A user's storage: the user themselves or an administrator; anyone else gets 404."""

    @extend_schema(
        summary="Storage used by a user's images, and their quota", responses=UsageOutputSerializer
    )
    def get(self, request: Request, username: str) -> Response:
        owner = user_get_managed(actor=request.user, username=username)
        return Response(UsageOutputSerializer(user_usage(user=owner)).data)
