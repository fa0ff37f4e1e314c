"""The agent's API (docs/agent-protocol.md): check-in, instructions, progress, log, result."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalogue.models import Compression
from flashing.authentication import AgentTokenAuthentication, is_agent
from flashing.models import NetworkMountState
from flashing.services import agent as services
from flashing.services.agent import INLINE_MAP_RANGES
from flashing.services.results import agent_result


class IsAgent(BasePermission):
    message = "Only the management agent, with its token, may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_agent(request.user)


class AgentApi(APIView):
    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]


class CheckinInputSerializer(serializers.Serializer):
    mac = serializers.CharField(max_length=40)
    agent_version = serializers.CharField(
        max_length=40, required=False, allow_blank=True, default=""
    )


class SyncEntrySerializer(serializers.Serializer):
    image = serializers.UUIDField()
    disk = serializers.CharField()
    version = serializers.IntegerField(help_text="The version flashed on the disk")
    size = serializers.IntegerField()
    sha256 = serializers.CharField(help_text="SHA-256 of the version flashed: unchanged if equal")
    upload_url = serializers.CharField()


class WriteEntrySerializer(serializers.Serializer):
    image = serializers.UUIDField()
    version = serializers.IntegerField()
    disk = serializers.CharField()
    url = serializers.CharField()
    size = serializers.IntegerField(help_text="Raw bytes")
    stored_size = serializers.IntegerField(allow_null=True, help_text="Bytes at url")
    sha256 = serializers.CharField(help_text="SHA-256 of the raw bytes")
    compression = serializers.ChoiceField(choices=Compression.choices)
    map_url = serializers.CharField(help_text="The version's data map (what the agent checks)")
    map = serializers.DictField(
        required=False,
        help_text="What map_url answers, when it is ready and has at most "
        f"{INLINE_MAP_RANGES} ranges: the agent does not ask for it",
    )
    data_url = serializers.CharField(help_text="The bytes of the map's ranges alone, in order")


class MountTlsSerializer(serializers.Serializer):
    identity = serializers.CharField(help_text="The PSK identity (user name) to give")
    psk = serializers.CharField(help_text="The pre-shared key, hex")


class MountEntrySerializer(serializers.Serializer):
    image = serializers.UUIDField()
    version = serializers.IntegerField(help_text="The pinned version the export starts from")
    disk = serializers.CharField(help_text="The disk the system expects this image as")
    state = serializers.ChoiceField(choices=NetworkMountState.choices)
    url = serializers.CharField(
        allow_null=True, help_text="nbd://host:port/export while served (state ready), else null"
    )
    tls = MountTlsSerializer(
        allow_null=True, help_text="TLS with this pre-shared key is required (null: plain NBD)"
    )


class LayoutPartitionSerializer(serializers.Serializer):
    number = serializers.IntegerField(help_text="From 1, in the order of the table")
    label = serializers.CharField(help_text="The GPT partition name")  # type: ignore[assignment]
    size = serializers.IntegerField(
        allow_null=True, help_text="Bytes; null: the rest of the disk (instructions only)"
    )
    type = serializers.CharField(help_text="The partition type GUID")
    start = serializers.IntegerField(required=False, help_text="Byte offset (results only)")


class LayoutEntrySerializer(serializers.Serializer):
    disk = serializers.CharField(help_text="The whole disk that holds the table")
    partitions = LayoutPartitionSerializer(many=True)


class LayoutReportSerializer(LayoutEntrySerializer):
    created = serializers.BooleanField(
        default=False, help_text="The agent wrote the table (false: the disk had it already)"
    )
    size = serializers.IntegerField(required=False, help_text="The disk's size in bytes")


class InstructionsSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    sync = SyncEntrySerializer(many=True)
    write = WriteEntrySerializer(many=True)
    mounts = MountEntrySerializer(
        many=True, help_text="User data images served over the network (NBD): not written"
    )
    layouts = LayoutEntrySerializer(
        many=True,
        help_text="Partition tables to make before writing (unless the disk has them): "
        "images on their partitions are written to the partitions' devices",
    )


class CheckinOutputSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The deployment token: the credential from now on")
    deployment = serializers.IntegerField()
    instructions = InstructionsSerializer(
        required=False,
        help_text="What GET /api/agent/instructions answers, saving the agent that call "
        "(absent when they cannot be given yet: the agent then asks for them)",
    )


def sync_disk(help_text: str) -> serializers.CharField:
    """The disk a sync entry names (``disk``): checked against the deployment's sync rows."""
    return serializers.CharField(required=False, max_length=255, help_text=help_text)


class ProgressInputSerializer(serializers.Serializer):
    image = serializers.UUIDField()
    phase = serializers.ChoiceField(choices=["syncing", "writing", "verifying"])
    bytes_done = serializers.IntegerField(min_value=0)
    bytes_total = serializers.IntegerField(min_value=0)
    disk = sync_disk(
        "The sync entry's disk, in a report about bringing it back (not while writing): the "
        "report is for that disk; 409 unless the deployment brings the image back from it"
    )


def log_lines(**options: Any) -> serializers.ListField:
    """An agent's log lines, as the log call and the result take them (at most 1000)."""
    return serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        max_length=1000,
        **options,
    )


class LogInputSerializer(serializers.Serializer):
    lines = log_lines()


class WrittenSerializer(serializers.Serializer):
    image = serializers.UUIDField()
    version = serializers.IntegerField()
    disk = serializers.CharField()
    sha256 = serializers.CharField()


class SyncedSerializer(serializers.Serializer):
    image = serializers.UUIDField()
    version = serializers.IntegerField()
    disk = sync_disk(
        "The sync entry's disk the version came back from; with `done`, 409 unless the "
        "deployment brings the image back from it and the version was uploaded naming it"
    )


class ResultInputSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["done", "failed"])
    written = WrittenSerializer(many=True, required=False, default=list)
    synced = SyncedSerializer(many=True, required=False, default=list)
    reason = serializers.CharField(required=False, allow_blank=True, default="")
    layouts = LayoutReportSerializer(
        many=True, required=False, default=list, help_text="The partition tables on the disks"
    )
    lines = log_lines(
        required=False,
        default=list,
        help_text="The agent's last log lines, kept (as POST /api/agent/log would) before the "
        "result: saves the agent that call",
    )


class AcceptedSerializer(serializers.Serializer):
    state = serializers.CharField(help_text="The deployment's state now")


class AgentCheckinApi(AgentApi):
    @extend_schema(
        tags=["agent"],
        request=CheckinInputSerializer,
        responses={200: CheckinOutputSerializer},
        description="Exchange the boot attempt's one-time boot token (Authorization) for a "
        "deployment token. The first check-in binds the attempt to that agent: any further "
        "check-in for it answers 409 and is recorded on the deployment. A token of a finished "
        "deployment answers 410; an unknown, revoked or older attempt's token 401.",
    )
    def post(self, request: Request) -> Response:
        data = CheckinInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        secret, deployment = services.agent_checkin(
            principal=request.user,
            address=request.META.get("REMOTE_ADDR"),
            **data.validated_data,
        )
        answer: dict[str, Any] = {"token": secret, "deployment": deployment.pk}
        instructions = services.agent_checkin_instructions(principal=request.user)
        if instructions is not None:  # else GET /api/agent/instructions says why
            answer["instructions"] = instructions
        return Response(answer)


class AgentInstructionsApi(AgentApi):
    @extend_schema(tags=["agent"], responses=InstructionsSerializer)
    def get(self, request: Request) -> Response:
        return Response(services.agent_instructions(principal=request.user))


class AgentProgressApi(AgentApi):
    @extend_schema(tags=["agent"], request=ProgressInputSerializer, responses={204: None})
    def post(self, request: Request) -> Response:
        data = ProgressInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = {**data.validated_data, "image": str(data.validated_data["image"])}
        services.agent_progress(principal=request.user, **values)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AgentLogApi(AgentApi):
    @extend_schema(tags=["agent"], request=LogInputSerializer, responses={204: None})
    def post(self, request: Request) -> Response:
        data = LogInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.agent_log(principal=request.user, lines=data.validated_data["lines"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class AgentResultApi(AgentApi):
    @extend_schema(
        tags=["agent"],
        request=ResultInputSerializer,
        responses=AcceptedSerializer,
        description="Finish the deployment. `done` is refused (409, nothing changes) while the "
        "deployment is booting or before progress was reported for every image to write, and "
        "with `synced` versions this agent did not upload; a `done` whose `written` list does "
        "not match the instructions exactly is recorded as `failed`.",
    )
    def post(self, request: Request) -> Response:
        data = ResultInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        deployment = agent_result(
            principal=request.user,
            state=values["state"],
            written=[{**item, "image": str(item["image"])} for item in values["written"]],
            synced=[{**item, "image": str(item["image"])} for item in values["synced"]],
            reason=values["reason"],
            layouts=values["layouts"],
            lines=values["lines"],
        )
        return Response({"state": deployment.state})
