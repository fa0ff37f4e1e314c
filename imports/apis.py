"""Import routes: start an import into an image (202 and the job), follow it, cancel it."""

from __future__ import annotations

import uuid
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from imports import selectors
from imports.models import ImportJob, Layout
from imports.services import jobs


class ImportInputSerializer(serializers.Serializer):
    oci = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=2000,
        help_text="A skopeo reference: docker://registry/repository:tag (or @sha256:…), or "
        "'oci-archive:' / 'docker-archive:' with the archive uploaded as 'archive'",
    )  # fmt: skip
    url = serializers.CharField(required=False, default="", allow_blank=True, max_length=2000)
    sha256 = serializers.CharField(required=False, default="", allow_blank=True, max_length=64)
    platform = serializers.CharField(
        required=False, default="linux/amd64", allow_blank=True, max_length=64
    )
    layout = serializers.ChoiceField(
        choices=Layout.choices, required=False, default=Layout.FILESYSTEM
    )
    size = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    label = serializers.CharField(  # type: ignore[assignment]  # a field, not Field.label
        required=False, default="root", allow_blank=True, max_length=16
    )
    username = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=500,
        help_text="Registry user: used once, never kept",
    )
    password = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=5000,
        help_text="Used once, never kept or logged",
    )
    archive = serializers.FileField(required=False, default=None)


class ImportOutputSerializer(serializers.ModelSerializer):
    image = serializers.UUIDField(source="image_id")
    version = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = ImportJob
        fields = [
            "id", "url", "image", "kind", "source", "platform", "layout", "size", "label",
            "sha256", "state", "cancel_requested", "manifest_digest", "layers_total",
            "layers_done", "bytes_done", "log", "reason", "version", "created_at",
            "started_at", "finished_at",
        ]  # fmt: skip

    def get_version(self, job: ImportJob) -> int | None:
        return job.version.number if job.version_id and job.version else None

    def get_url(self, job: ImportJob) -> str:
        return reverse("import-detail", kwargs={"job_id": job.pk})


def _answer(job: ImportJob, code: int = status.HTTP_200_OK) -> Response:
    headers = {"Location": reverse("import-detail", kwargs={"job_id": job.pk})}
    return Response(ImportOutputSerializer(job).data, status=code, headers=headers)


class ImageImportApi(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        request=ImportInputSerializer,
        responses={202: ImportOutputSerializer},
        description="Import a container image (skopeo reference) or a disk image at a URL as "
        "the image's next version. Answers 202 with the job; follow it at Location. Who may "
        "upload to the image may import into it.",
    )
    def post(self, request: Request, image_id: uuid.UUID) -> Response:
        image = selectors.image_for_import(actor=request.user, image_id=image_id)
        data = ImportInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values: dict[str, Any] = dict(data.validated_data)
        archive = values.pop("archive")
        values["platform"] = values["platform"] or "linux/amd64"
        values["label"] = values["label"] or "root"
        job = jobs.import_create(
            actor=request.user, image=image, request=jobs.ImportRequest(**values), archive=archive
        )
        return _answer(job, status.HTTP_202_ACCEPTED)

    @extend_schema(responses={200: ImportOutputSerializer(many=True)})
    def get(self, request: Request, image_id: uuid.UUID) -> Response:
        image = selectors.image_for_import(actor=request.user, image_id=image_id)
        found = selectors.imports_of_image(actor=request.user, image=image)[:50]
        return Response(ImportOutputSerializer(found, many=True).data)


class ImportDetailApi(APIView):
    @extend_schema(responses={200: ImportOutputSerializer})
    def get(self, request: Request, job_id: int) -> Response:
        return _answer(jobs.import_get_visible(actor=request.user, job_id=job_id))

    @extend_schema(responses={202: ImportOutputSerializer}, description="Cancel the import.")
    def delete(self, request: Request, job_id: int) -> Response:
        return _answer(jobs.import_cancel(actor=request.user, job_id=job_id), 202)


class ImportCancelApi(APIView):
    @extend_schema(request=None, responses={202: ImportOutputSerializer})
    def post(self, request: Request, job_id: int) -> Response:
        return _answer(jobs.import_cancel(actor=request.user, job_id=job_id), 202)
