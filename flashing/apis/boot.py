"""Network boot: ``GET /api/boot/<mac>.ipxe`` and the management OS files (no authentication),
and ``POST /api/deployment/<id>/boot-again``, a manual boot by a person."""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from flashing.services.boot import (
    boot_image_file,
    boot_script,
    deployment_boot_again,
    deployment_get_bootable,
)

MGMT_FILES = {"vmlinuz": "application/octet-stream", "initrd.img": "application/octet-stream"}


class BootScriptApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["boot"],
        auth=[],
        responses={200: OpenApiResponse(OpenApiTypes.STR, description="An iPXE script")},
        description="The iPXE script for a machine booting from the network: the management "
        "OS while a deployment runs on it, else its local disk. Only the first script of an "
        "armed boot attempt carries the attempt's one-time boot token; later fetches in the "
        "same attempt boot the local disk and are recorded on the deployment. Unknown MACs "
        "boot from their disk and are recorded (boundedly) for the administrators.",
    )
    def get(self, request: Request, mac: str) -> HttpResponse:
        server = settings.BAAS_PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")
        script = boot_script(mac=mac, server=server, ip=request.META.get("REMOTE_ADDR"))
        response = HttpResponse(script, content_type="text/plain; charset=utf-8")
        response["Cache-Control"] = "no-store"
        return response


class ManagementOsFileApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["boot"],
        auth=[],
        responses={
            200: OpenApiResponse(OpenApiTypes.BINARY, description="vmlinuz or initrd.img"),
            404: OpenApiResponse(description="Not built: python -m mgmt_os.build"),
        },
        description="The management OS kernel and initrd, built by `python -m mgmt_os.build`.",
    )
    def get(self, request: Request, name: str) -> FileResponse:
        if name not in MGMT_FILES:
            raise Http404("No such file.")
        path = settings.BAAS_MGMT_OS_DIR / name
        try:
            handle = path.open("rb")
        except OSError:
            raise Http404(f"{name} is not built: run python -m mgmt_os.build.") from None
        return FileResponse(handle, content_type=MGMT_FILES[name])


class BootImageFileApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["boot"],
        auth=[],
        responses={
            200: OpenApiResponse(OpenApiTypes.BINARY, description="vmlinuz or initrd.img"),
            404: OpenApiResponse(description="Wrong secret, or not this machine's boot now"),
        },
        description="The kernel or initrd of the boot image a machine boots, as named in its "
        "iPXE script. The URL carries a secret of the deployment that put the boot image on "
        "the machine; it works while that deployment is the machine's last one and its lease "
        "holds.",
    )
    def get(self, request: Request, deployment_id: int, secret: str, name: str) -> FileResponse:
        path = boot_image_file(deployment_id=deployment_id, secret=secret, name=name)
        response = FileResponse(path.open("rb"), content_type="application/octet-stream")
        response["Cache-Control"] = "no-store"
        return response


class BootAgainOutputSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    state = serializers.CharField(help_text="booting")
    attempt = serializers.IntegerField(help_text="The new boot attempt, armed")
    detail = serializers.CharField(help_text="What to do now")


class DeploymentBootAgainApi(APIView):
    @extend_schema(
        tags=["deployments"],
        request=None,
        responses={200: BootAgainOutputSerializer},
        description="Ask for a manual boot of a running deployment (its requester, the "
        "machine's lessee or an administrator): a new boot attempt starts, the earlier "
        "attempt's agent can no longer report, and the machine's next network boot gets the "
        "new attempt's one-time boot token. BAAS does not power the machine: boot it "
        "yourself. 409 unless the deployment runs.",
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment = deployment_get_bootable(actor=request.user, deployment_id=deployment_id)
        deployment = deployment_boot_again(actor=request.user, deployment=deployment)
        detail = (
            f"Attempt {deployment.attempt} is armed: boot {deployment.machine.name} from the "
            "network now."
        )
        return Response(
            {
                "deployment": deployment.pk,
                "state": deployment.state,
                "attempt": deployment.attempt,
                "detail": detail,
            }
        )
