"""REST API for image setups (paths from the original BAAS, under ``/api/``).

Who may: create a setup for a user — that user or an administrator; list,
read, change, delete a user's setups and their images — that user, moderators
and administrators. Anyone else gets 404, as if the user had no setups.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from baas_site.created import LOCATION, created
from baas_site.filters import FILTER_BACKENDS
from catalogue import layouts
from catalogue.models import MOUNT_HELP, Image, ImageFrozen, ImageSetup, Mount
from catalogue.selectors import setups as selectors
from catalogue.services import setups as services


class FrozenImageOutputSerializer(serializers.ModelSerializer):
    image = serializers.UUIDField(source="image_id")
    image_name = serializers.CharField(source="image.name")
    image_type = serializers.CharField(source="image.type")
    version = serializers.IntegerField(source="version.number")
    disk = serializers.CharField(help_text="The disk it is written to: the override or the image's")

    class Meta:
        model = ImageFrozen
        fields = [
            "id",
            "image",
            "image_name",
            "image_type",
            "version",
            "sync",
            "target_disk",
            "disk",
            "mount",
            "partition",
        ]


class PartitionSerializer(serializers.Serializer):
    label = serializers.CharField(help_text="The GPT partition name (PARTLABEL)")  # type: ignore[assignment]
    size = serializers.IntegerField(
        allow_null=True, help_text="Bytes, a whole number of MiB; null: the rest of the disk"
    )
    type = serializers.CharField(
        help_text="linux, root-x86-64, home, swap, esp, bios, or a type GUID"
    )
    number = serializers.IntegerField(read_only=True)
    device = serializers.CharField(read_only=True, help_text="Its device path: /dev/sda2")


class LayoutSerializer(serializers.Serializer):
    disk = serializers.CharField(help_text="The whole disk the table is written to")
    partitions = PartitionSerializer(many=True)


LAYOUT_HELP = (
    "A GPT for one disk: partitions one after the other from 1 MiB, the last one may "
    "take the rest of the disk (size null). The agent writes the table unless the disk "
    "has it already; images are pinned to its partitions by label. null: no table."
)


@extend_schema_field(LayoutSerializer(allow_null=True))
class LayoutField(serializers.JSONField):
    """The layout as sent; its rules are ``catalogue.layouts``' (through the service)."""


class SetupOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")
    images = FrozenImageOutputSerializer(source="frozen_images", many=True)
    layout = serializers.SerializerMethodField(help_text=LAYOUT_HELP)

    class Meta:
        model = ImageSetup
        fields = [
            "uuid",
            "name",
            "description",
            "owner",
            "layout",
            "images",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(LayoutSerializer(allow_null=True))
    def get_layout(self, setup: ImageSetup) -> dict[str, Any] | None:
        return layouts.as_json(setup.layout)


class SetupInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    layout = LayoutField(required=False, allow_null=True, default=None, help_text=LAYOUT_HELP)


class SetupPatchInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    layout = LayoutField(required=False, allow_null=True, help_text=LAYOUT_HELP)


class FrozenImageInputSerializer(serializers.Serializer):
    image = serializers.UUIDField()
    version = serializers.IntegerField(min_value=0)
    sync = serializers.BooleanField(
        default=False, help_text="Bring the disk back after use; always on for user data images."
    )
    target_disk = serializers.CharField(
        max_length=255,
        required=False,
        default="",
        allow_blank=True,
        help_text="Overrides the image's target disk.",
    )
    mount = serializers.ChoiceField(
        choices=Mount.choices, default=Mount.FLASH, help_text=MOUNT_HELP
    )
    partition = serializers.CharField(
        max_length=64,
        required=False,
        default="",
        allow_blank=True,
        help_text="Write it into this partition (by label) of the setup's partition table.",
    )


class FrozenImageRemoveInputSerializer(serializers.Serializer):
    image = serializers.UUIDField()


def _setup_response(setup: ImageSetup, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(SetupOutputSerializer(setup).data, status=status_code)


class SetupCreateApi(APIView):
    @extend_schema(
        request=SetupInputSerializer, responses={201: SetupOutputSerializer}, parameters=[LOCATION]
    )
    def post(self, request: Request, username: str) -> Response:
        owner = selectors.setup_owner_get(actor=request.user, username=username, creating=True)
        data = SetupInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        setup = services.setup_create(actor=request.user, owner=owner, **data.validated_data)
        setup = selectors.setup_get(owner=owner, setup_uuid=setup.uuid)
        return created(
            SetupOutputSerializer(setup).data,
            "setup-detail",
            username=owner.username,
            setup_uuid=setup.uuid,
        )


class SetupListApi(generics.ListAPIView):
    serializer_class = SetupOutputSerializer
    queryset = ImageSetup.objects.none()  # the model, for the schema; ``get_queryset`` reads
    filter_backends = FILTER_BACKENDS
    ordering_fields = ["name", "created_at", "updated_at"]

    def get_queryset(self) -> QuerySet[ImageSetup]:
        owner = selectors.setup_owner_get(actor=self.request.user, username=self.kwargs["username"])
        return selectors.setup_list(owner=owner)


class SetupDetailApi(APIView):
    def _get(self, request: Request, username: str, setup_uuid: str) -> ImageSetup:
        owner = selectors.setup_owner_get(actor=request.user, username=username)
        return selectors.setup_get(owner=owner, setup_uuid=setup_uuid)

    @extend_schema(responses=SetupOutputSerializer)
    def get(self, request: Request, username: str, setup_uuid: str) -> Response:
        return _setup_response(self._get(request, username, setup_uuid))

    @extend_schema(request=SetupInputSerializer, responses=SetupOutputSerializer)
    def put(self, request: Request, username: str, setup_uuid: str) -> Response:
        return self._update(request, username, setup_uuid, SetupInputSerializer)

    @extend_schema(request=SetupPatchInputSerializer, responses=SetupOutputSerializer)
    def patch(self, request: Request, username: str, setup_uuid: str) -> Response:
        return self._update(request, username, setup_uuid, SetupPatchInputSerializer)

    def _update(self, request: Request, username: str, setup_uuid: str, serializer) -> Response:
        setup = self._get(request, username, setup_uuid)
        data = serializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.setup_update(actor=request.user, setup=setup, **data.validated_data)
        return _setup_response(selectors.setup_get(owner=setup.owner, setup_uuid=setup.uuid))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, username: str, setup_uuid: str) -> Response:
        setup = self._get(request, username, setup_uuid)
        services.setup_delete(actor=request.user, setup=setup)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SetupImagesApi(APIView):
    """The images pinned in a setup: list them, pin one, unpin one."""

    def _get(self, request: Request, username: str, setup_uuid: str) -> ImageSetup:
        owner = selectors.setup_owner_get(actor=request.user, username=username)
        return selectors.setup_get(owner=owner, setup_uuid=setup_uuid)

    @extend_schema(responses=FrozenImageOutputSerializer(many=True))
    def get(self, request: Request, username: str, setup_uuid: str) -> Response:
        setup = self._get(request, username, setup_uuid)
        return Response(FrozenImageOutputSerializer(setup.frozen_images.all(), many=True).data)

    @extend_schema(
        request=FrozenImageInputSerializer,
        responses={201: FrozenImageOutputSerializer},
        parameters=[LOCATION],
    )
    def post(self, request: Request, username: str, setup_uuid: str) -> Response:
        setup = self._get(request, username, setup_uuid)
        data = FrozenImageInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        frozen = services.setup_image_add(
            actor=request.user,
            setup=setup,
            image=Image.objects.filter(pk=values["image"]).first(),
            version_number=values["version"],
            sync=values["sync"],
            target_disk=values["target_disk"],
            mount=values["mount"],
            partition=values["partition"],
        )
        # A pinned image has no URL of its own: the setup's image list shows it.
        return created(
            FrozenImageOutputSerializer(frozen).data,
            "setup-images",
            username=setup.owner.username,
            setup_uuid=setup.uuid,
        )

    @extend_schema(
        request=FrozenImageRemoveInputSerializer,
        parameters=[
            OpenApiParameter(
                "image", str, description="The image's UUID, for clients that send no body"
            )
        ],
        responses={204: None},
    )
    def delete(self, request: Request, username: str, setup_uuid: str) -> Response:
        setup = self._get(request, username, setup_uuid)
        payload = request.data or {"image": request.query_params.get("image")}
        data = FrozenImageRemoveInputSerializer(data=payload)
        data.is_valid(raise_exception=True)
        frozen = selectors.frozen_get(setup=setup, image_uuid=data.validated_data["image"])
        services.setup_image_remove(actor=request.user, setup=setup, frozen=frozen)
        return Response(status=status.HTTP_204_NO_CONTENT)
