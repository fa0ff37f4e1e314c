"""REST API for images and their versions (paths from the original BAAS, under ``/api/``).

Views are thin: an input serializer, one selector or service call, an output
serializer. Who may do what is decided by ``catalogue.rules`` (in the
selectors and services); unknown images, and images the caller may not read,
answer 404; malformed UUIDs 400.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import generics, serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.selectors import user_get_managed
from baas_site.created import LOCATION, created, location
from baas_site.filters import FILTER_BACKENDS
from catalogue import filters
from catalogue.apis import resumable, uploads
from catalogue.apis.fields import DigestField
from catalogue.models import (
    Compression,
    FileStandard,
    Image,
    ImageType,
    TransferProtocol,
    Version,
    validate_image_name,
    validate_target_disk,
)
from catalogue.selectors import images as selectors
from catalogue.services import images as services
from catalogue.services import lifecycle
from catalogue.services.delivery import sha256_field
from catalogue.services.renditions import rendition_summary

# --- Serializers ---------------------------------------------------------------------

RAW_RENDITION_SCHEMA = inline_serializer(
    "RawRendition",
    {
        "state": serializers.ChoiceField(choices=["pending", "ready", "failed"]),
        "size": serializers.IntegerField(allow_null=True),
        "sha256": serializers.CharField(allow_null=True),
        "reason": serializers.CharField(allow_null=True),
    },
    allow_null=True,
)


class VersionOutputSerializer(serializers.ModelSerializer):
    sha256 = DigestField(
        help_text="SHA-256 of the raw image; null for a few seconds after a large upload, "
        "until the background job that computes it has run"
    )
    compression = serializers.CharField(
        source="stored_compression", help_text="How the file is stored now"
    )
    uploaded_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    raw = serializers.SerializerMethodField(
        help_text="qcow2 images only (else null): the raw disk the version describes, made by "
        "qemu-img after the upload; what agents write and ?format=raw serves. state: pending, "
        "ready or failed; size: its bytes (the virtual size); sha256 once ready; reason if failed"
    )

    class Meta:
        model = Version
        fields = [
            "number",
            "size",
            "virtual_size",
            "sha256",
            "raw",
            "damaged",
            "stored_size",
            "compression",
            "uploaded_by",
            "created_at",
            "note",
            "based_on",
        ]

    @extend_schema_field(RAW_RENDITION_SCHEMA)
    def get_raw(self, version: Version) -> dict[str, Any] | None:
        return rendition_summary(version)


class VersionUploadedSerializer(VersionOutputSerializer):
    version = serializers.IntegerField(source="number", help_text="The new version's number")
    image = serializers.UUIDField(source="image_id")

    class Meta(VersionOutputSerializer.Meta):
        fields = ["version", "image", *VersionOutputSerializer.Meta.fields]


class ImageOutputSerializer(serializers.ModelSerializer):
    owner: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    maintainers: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", many=True, read_only=True
    )
    associated_images: serializers.PrimaryKeyRelatedField[Image] = (
        serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    )
    versions = VersionOutputSerializer(many=True, read_only=True)
    shared = serializers.SerializerMethodField(
        help_text="A system image: the shared base every signed-in user may build on "
        "(changed only by its assigned moderators and administrators)"
    )
    storage_used = serializers.SerializerMethodField(
        help_text="Bytes this image's versions take on disk (holes and compression counted)"
    )

    class Meta:
        model = Image
        fields = [
            "uuid",
            "name",
            "owner",
            "description",
            "type",
            "shared",
            "file_standard",
            "compression",
            "target_disk",
            "transfer_protocol",
            "associated_images",
            "maintainers",
            "expires_at",
            "keep_versions",
            "storage_used",
            "created_at",
            "updated_at",
            "versions",
        ]
        extra_kwargs = {
            "expires_at": {
                "help_text": "Temporal images: deleted with their files after this moment "
                "(POST …/extend to keep them longer); null for every other type"
            },
        }

    def get_shared(self, image: Image) -> bool:
        return image.type == ImageType.SYSTEM

    @extend_schema_field(OpenApiTypes.INT64)
    def get_storage_used(self, image: Image) -> int:
        # The versions are prefetched (selectors.image_queryset): no query per image.
        return sum(version.stored_size for version in image.versions.all())


class ImageCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, validators=[validate_image_name])
    type = serializers.ChoiceField(choices=ImageType.choices, default=ImageType.SINGLE)
    file_standard = serializers.ChoiceField(choices=FileStandard.choices, default=FileStandard.RAW)
    compression = serializers.ChoiceField(choices=Compression.choices, default=Compression.NONE)
    target_disk = serializers.CharField(
        max_length=255, default="/dev/sda", validators=[validate_target_disk]
    )
    transfer_protocol = serializers.ChoiceField(
        choices=TransferProtocol.choices, default=TransferProtocol.HTTP
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")
    keep_versions = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="Keep only this many of the latest versions (null: every version)",
    )


class ImageUpdateInputSerializer(serializers.Serializer):
    """Every field is optional: what is left out stays as it is (for PUT and PATCH alike)."""

    name = serializers.CharField(max_length=200, required=False, validators=[validate_image_name])
    description = serializers.CharField(required=False, allow_blank=True)
    type = serializers.ChoiceField(choices=ImageType.choices, required=False)
    file_standard = serializers.ChoiceField(
        choices=FileStandard.choices, required=False, help_text="Fixed at creation"
    )
    compression = serializers.ChoiceField(choices=Compression.choices, required=False)
    target_disk = serializers.CharField(
        max_length=255, required=False, validators=[validate_target_disk]
    )
    transfer_protocol = serializers.ChoiceField(choices=TransferProtocol.choices, required=False)
    keep_versions = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text="Keep only this many of the latest versions (null: every version); "
        "versions pinned by a setup, on a machine's disk, being deployed or network-mounted, "
        "or booted over the network by a machine are always kept",
    )
    associated_images = serializers.ListField(
        child=serializers.UUIDField(), required=False, help_text="UUIDs of images you may read"
    )
    maintainers = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Usernames of moderators (administrators only)",
    )

    def validate_associated_images(self, value: list) -> list[Image]:
        found = {image.pk: image for image in Image.objects.filter(pk__in=value)}
        missing = [str(pk) for pk in value if pk not in found]
        if missing:
            raise serializers.ValidationError(f"No such image: {', '.join(missing)}.")
        return list(found.values())

    def validate_maintainers(self, value: list[str]) -> list[User]:
        found = {user.username: user for user in User.objects.filter(username__in=value)}
        missing = [name for name in value if name not in found]
        if missing:
            raise serializers.ValidationError(f"No such user: {', '.join(missing)}.")
        return list(found.values())


class ImageExtendInputSerializer(serializers.Serializer):
    days = serializers.IntegerField(
        min_value=1,
        help_text="Days added to the current expiry (or to now, if it has passed); the result "
        "may be at most BAAS_TEMPORAL_MAX_DAYS days from now",
    )


class UploadFormSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The image; .zst or .gz names are decompressed")
    sha256 = serializers.CharField(required=False, help_text="Expected SHA-256 (hex)")
    note = serializers.CharField(required=False, max_length=500)


UPLOAD_HEADERS = [
    OpenApiParameter(
        "Content-Digest",
        str,
        OpenApiParameter.HEADER,
        description="RFC 9530: sha-256=:<base64>: of the bytes sent or of the raw image",
    ),
    OpenApiParameter(
        "Want-Repr-Digest",
        str,
        OpenApiParameter.HEADER,
        description="RFC 9530: sha-256=1 to have the whole-image SHA-256 in the answer "
        "(and its Repr-Digest header) even for a large upload",
    ),
    OpenApiParameter(
        "Content-Encoding", str, OpenApiParameter.HEADER, enum=["zstd", "gzip", "identity"]
    ),
    OpenApiParameter(
        "Upload-Base-Version",
        int,
        OpenApiParameter.HEADER,
        description="A delta upload: the body is an Android sparse image of the changes "
        "against this version (its DONT_CARE chunks mean 'as in this version'); the new "
        "version is composed from it and records it as based_on (docs/uploads.md)",
    ),
    OpenApiParameter(
        "Upload-Map-Digest",
        str,
        OpenApiParameter.HEADER,
        description="With Upload-Base-Version: the SHA-256 (hex) of the data map the composed "
        "image must have (diskimage.sparsedelta.map_digest); refused if it differs",
    ),
]
# A machine's agent bringing user data back names the disk (docs/agent-protocol.md §4).
SYNC_DISK = OpenApiParameter(
    "disk",
    OpenApiTypes.STR,
    OpenApiParameter.QUERY,
    required=False,
    description="Agents only: the disk of the sync entry this upload brings back; 409 unless "
    "the deployment brings the image back from that disk. The version's note names it.",
)
UPLOAD_SCHEMA = extend_schema(
    summary="Upload the next version",
    description="The body is the image (raw, zstd/gzip compressed, or an Android sparse "
    "image as img2simg writes it: the raw image without its holes), or a multipart "
    "form with the field 'file'. Answers with the new version; nothing is stored on error. "
    "The answer to an upload larger than BAAS_UPLOAD_INLINE_SHA256_MAX (1 GiB by default) "
    "comes as soon as its data is stored, with sha256 null: a background job records it "
    "seconds later, and checks a zstd upload's frame checksums in the same pass (the "
    "version shows damaged if they differ). A large zstd upload of a raw image is stored "
    "as sent, its size from its frame headers, and decoded by that job, which marks it "
    "damaged if it does not decode to what they announce. Send Content-Digest or "
    "Want-Repr-Digest to wait for all of it instead.",
    request={
        "multipart/form-data": UploadFormSerializer,
        "application/octet-stream": OpenApiTypes.BINARY,
        "application/zstd": OpenApiTypes.BINARY,
        "application/gzip": OpenApiTypes.BINARY,
        "application/vnd.android.sparse-image": OpenApiTypes.BINARY,
    },
    parameters=[*UPLOAD_HEADERS, LOCATION, SYNC_DISK],
    responses={201: VersionUploadedSerializer},
)
ERROR = inline_serializer("Error", {"detail": serializers.CharField()})


def _image_response(image: Image, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(ImageOutputSerializer(image).data, status=status_code)


# --- Views -------------------------------------------------------------------------------


class ImageCreateApi(APIView):
    """Create an image owned by ``username``: the user themselves or an administrator."""

    @extend_schema(
        request=ImageCreateInputSerializer,
        responses={201: ImageOutputSerializer, 403: ERROR, 404: ERROR},
        parameters=[LOCATION],
    )
    def post(self, request: Request, username: str) -> Response:
        owner = user_get_managed(actor=request.user, username=username)
        data = ImageCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        image = services.image_create(actor=request.user, owner=owner, **data.validated_data)
        image = selectors.image_queryset().get(pk=image.pk)
        return created(ImageOutputSerializer(image).data, "image-detail", image_id=image.pk)


class _ImageListApi(generics.ListAPIView[Image]):
    """Image lists: the FilterSet and the ordering, applied to what the selector allows."""

    serializer_class = ImageOutputSerializer
    queryset = Image.objects.none()  # the model, for the schema; ``get_queryset`` reads
    filter_backends = FILTER_BACKENDS
    ordering_fields = ["name", "created_at", "updated_at"]


class UserImageListApi(_ImageListApi):
    """A user's images: the user themselves or an administrator."""

    filterset_class = filters.OwnedImageFilter

    def get_queryset(self) -> QuerySet[Image]:
        owner = user_get_managed(actor=self.request.user, username=self.kwargs["username"])
        return selectors.image_list_owned(owner=owner)


class UserImagesByNameApi(_ImageListApi):
    """A user's images with this name (names are not unique)."""

    filterset_class = filters.ImageTypeFilter

    def get_queryset(self) -> QuerySet[Image]:
        owner = user_get_managed(actor=self.request.user, username=self.kwargs["username"])
        image_name = self.kwargs["image_name"]
        try:  # a name no image can have: say so, rather than answer an empty list
            validate_image_name(image_name)
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"image_name": exc.messages}) from exc
        return selectors.image_list_owned(owner=owner).filter(name=image_name)

    @extend_schema(operation_id="user_images_by_name")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class ImageListApi(_ImageListApi):
    """Every image the caller may read: their own, system images, those they maintain."""

    filterset_class = filters.ImageFilter

    def get_queryset(self) -> QuerySet[Image]:
        return selectors.image_list_readable(actor=self.request.user)


class ImageDetailApi(APIView):
    """Read, change, delete an image, and upload its next version (POST, or a binary PUT)."""

    def get_parsers(self) -> list[BaseParser]:
        # Called while DRF wraps the request: ``self.request`` is still Django's (set by
        # View.setup); None while the schema is generated.
        request = getattr(self, "request", None)
        if request is not None and uploads.is_upload(request):
            return [uploads.UnreadBodyParser()]
        return super().get_parsers()

    @extend_schema(responses={200: ImageOutputSerializer, 400: ERROR, 404: ERROR})
    def get(self, request: Request, image_id: str) -> Response:
        return _image_response(selectors.image_get_readable(actor=request.user, image_id=image_id))

    @UPLOAD_SCHEMA
    def post(self, request: Request, image_id: str) -> Response:
        image = selectors.image_get_writable(
            actor=request.user, image_id=image_id, full=False, doing="upload to"
        )
        if resumable.is_resumable_creation(request._request):  # Upload-Complete: ?0
            uploads.refuse_resumable_delta(request._request)
            return resumable.create(request, image)
        _quota_check_up_front(request, image)
        return version_created_response(uploads.upload_version(request, image))

    @extend_schema(
        summary="Change metadata (JSON), or upload the next version (binary body, as curl -T)",
        request={
            "application/json": ImageUpdateInputSerializer,
            "application/octet-stream": OpenApiTypes.BINARY,
        },
        parameters=[*UPLOAD_HEADERS, LOCATION],
        responses={200: ImageOutputSerializer, 201: VersionUploadedSerializer, 403: ERROR},
    )
    def put(self, request: Request, image_id: str) -> Response:
        if uploads.is_upload(request._request):
            return self.post(request, image_id)
        return self.patch(request, image_id)

    @extend_schema(
        request=ImageUpdateInputSerializer, responses={200: ImageOutputSerializer, 403: ERROR}
    )
    def patch(self, request: Request, image_id: str) -> Response:
        image = selectors.image_get_readable(actor=request.user, image_id=image_id)
        data = ImageUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.image_update(actor=request.user, image=image, **data.validated_data)
        return _image_response(selectors.image_queryset().get(pk=image.pk))

    @extend_schema(responses={204: None, 403: ERROR, 409: ERROR})
    def delete(self, request: Request, image_id: str) -> Response:
        image = selectors.image_get_readable(actor=request.user, image_id=image_id, full=False)
        services.image_delete(actor=request.user, image=image)
        return Response(status=status.HTTP_204_NO_CONTENT)


def version_created_response(version: Version) -> Response:
    """The answer to an upload: 201, the new version, where to download it, its digest."""
    headers = {
        "Location": location("image-download", image_uuid=version.image_id, number=version.number)
    }
    if version.sha256:  # RFC 9530: the digest of the image now stored
        headers["Repr-Digest"] = sha256_field(version.sha256)
    return Response(
        VersionUploadedSerializer(version).data, status=status.HTTP_201_CREATED, headers=headers
    )


def _quota_check_up_front(request: Request, image: Image) -> None:
    """413 before reading a byte when the body is longer than the owner's quota leaves."""
    guard = lifecycle.quota_guard_for(image)
    if guard is not None:
        length = request.META.get("CONTENT_LENGTH")
        guard.check_length(int(length) if length and length.isdigit() else None)


class ImageExtendApi(APIView):
    """Keep a temporal image longer: whoever may change the image, within the maximum."""

    @extend_schema(
        summary="Extend a temporal image's retention",
        description="Adds `days` to the image's `expires_at` (counted from now if it has "
        "passed). The new expiry may be at most BAAS_TEMPORAL_MAX_DAYS days from now, else "
        "400 says how many days are left; 409 for an image that is not temporal.",
        request=ImageExtendInputSerializer,
        responses={200: ImageOutputSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request: Request, image_id: str) -> Response:
        image = selectors.image_get_readable(actor=request.user, image_id=image_id, full=False)
        data = ImageExtendInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lifecycle.image_extend(actor=request.user, image=image, days=data.validated_data["days"])
        return _image_response(selectors.image_queryset().get(pk=image.pk))


class VersionListApi(generics.ListAPIView):
    """An image's versions, oldest first."""

    serializer_class = VersionOutputSerializer
    queryset = Version.objects.none()  # the model, for the schema; ``get_queryset`` reads
    filter_backends = FILTER_BACKENDS
    ordering_fields = ["number", "created_at"]

    def get_queryset(self) -> QuerySet[Version]:
        image = selectors.image_get_readable(
            actor=self.request.user, image_id=self.kwargs["image_id"], full=False
        )
        return selectors.version_list(image=image)

    @extend_schema(responses={200: VersionOutputSerializer(many=True), 404: ERROR})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
