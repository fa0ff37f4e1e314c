"""Shapes of the flashing API: input serializers validate, output serializers show."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalogue.models import ImageSetup, validate_target_disk
from flashing import rules
from flashing.models import (
    SERVICE_STATES,
    Architecture,
    Deployment,
    DeploymentEvent,
    DeploymentImage,
    DeploymentState,
    DiskContent,
    Lease,
    MacAddress,
    Machine,
    NetworkMount,
    PowerDriver,
    mask_power_settings,
    normalize_mac,
)
from flashing.selectors import lease_active
from flashing.services.machines import DiskSpec
from flashing.services.mount_urls import mount_tls, mount_url

# --- Machines ----------------------------------------------------------------------


class MacAddressField(serializers.CharField):
    """A MAC address in any common form, normalised to ``aa:bb:cc:dd:ee:ff``."""

    def to_internal_value(self, data: Any) -> str:
        try:
            return normalize_mac(super().to_internal_value(data))
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc


class DiskSerializer(serializers.Serializer):
    path = serializers.CharField(max_length=255, validators=[validate_target_disk])
    size = serializers.IntegerField(min_value=1, help_text="Capacity in bytes")


class MachineInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    architecture = serializers.ChoiceField(choices=Architecture.choices, default="x86_64")
    managed = serializers.BooleanField(default=True)
    mac_addresses = serializers.ListField(child=MacAddressField(), min_length=1)
    disks = DiskSerializer(many=True, default=list)
    power_driver = serializers.ChoiceField(choices=PowerDriver.choices, default="manual")
    power_settings = serializers.DictField(
        default=dict,
        help_text="Driver settings; send a secret back as ******** to keep its stored value.",
    )
    default_setup = serializers.UUIDField(allow_null=True, default=None)
    description = serializers.CharField(allow_blank=True, default="")
    state = serializers.ChoiceField(
        choices=SERVICE_STATES,
        required=False,
        help_text="Take the machine out of service, or put it back (available).",
    )

    def validate_mac_addresses(self, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("A MAC address is listed twice.")
        return value

    def validate_disks(self, value: list[dict]) -> list[DiskSpec]:
        paths = [d["path"] for d in value]
        if len(set(paths)) != len(paths):
            raise serializers.ValidationError("A disk is listed twice.")
        return [DiskSpec(path=d["path"], size=d["size"]) for d in value]

    def validate_default_setup(self, value: Any) -> ImageSetup | None:
        if value is None:
            return None
        setup = ImageSetup.objects.filter(uuid=value).first()
        if setup is None:
            raise serializers.ValidationError("No such setup.")
        return setup


class DiskContentSerializer(serializers.ModelSerializer):
    image = serializers.UUIDField(source="image_id", allow_null=True)
    image_name = serializers.CharField(source="image.name", default=None)
    version = serializers.IntegerField(source="version_number")

    class Meta:
        model = DiskContent
        fields = ["disk", "image", "image_name", "version", "sync", "written_at"]


class LeaseSummarySerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")

    class Meta:
        model = Lease
        fields = ["id", "user", "starts_at", "ends_at"]


class MachineOutputSerializer(serializers.ModelSerializer):
    mac_addresses: serializers.SlugRelatedField[MacAddress] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="address"
    )
    disks = DiskSerializer(many=True, read_only=True)
    disk_contents = DiskContentSerializer(many=True, read_only=True)
    default_setup = serializers.UUIDField(source="default_setup_id", allow_null=True)
    power_settings = serializers.SerializerMethodField()
    lease = serializers.SerializerMethodField()

    class Meta:
        model = Machine
        fields = [
            "name",
            "mac_addresses",
            "architecture",
            "managed",
            "state",
            "disks",
            "disk_contents",
            "power_driver",
            "power_settings",
            "default_setup",
            "lease",
            "description",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "description": "Administrators only; secrets are shown as ********.",
        }
    )
    def get_power_settings(self, machine: Machine) -> dict | None:
        if not rules.can_manage_machines(self.context["request"].user):
            return None
        return mask_power_settings(machine.power_settings)

    @extend_schema_field(LeaseSummarySerializer(allow_null=True))
    def get_lease(self, machine: Machine) -> dict | None:
        lease = lease_active(machine=machine)
        return LeaseSummarySerializer(lease).data if lease else None


# --- Leases ----------------------------------------------------------------------------


class LeaseInputSerializer(serializers.Serializer):
    hours = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="How long to lease, or to extend by; administrators set the default and maximum.",
    )


class LeaseOutputSerializer(serializers.ModelSerializer):
    machine = serializers.CharField(source="machine.name")
    user = serializers.CharField(source="user.username")

    class Meta:
        model = Lease
        fields = ["id", "machine", "user", "starts_at", "ends_at", "ended_at", "end_reason"]


# --- Deployments ------------------------------------------------------------------------


class DeploymentInputSerializer(serializers.Serializer):
    setup = serializers.UUIDField()
    sync = serializers.BooleanField(
        default=False, help_text="Bring the machine's current user data back first."
    )


class DeploymentImageSerializer(serializers.ModelSerializer):
    image = serializers.UUIDField(source="image_id", allow_null=True)
    version = serializers.IntegerField(source="version_number")

    class Meta:
        model = DeploymentImage
        fields = [
            "direction",
            "image",
            "version",
            "disk",
            "sync",
            "phase",
            "bytes_done",
            "bytes_total",
            "rate",
            "progress_at",
        ]
        extra_kwargs = {"rate": {"help_text": "Bytes per second, between the last two reports"}}


class DeploymentEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", default=None)

    class Meta:
        model = DeploymentEvent
        fields = ["created_at", "actor", "action", "state", "message"]


class DeploymentOutputSerializer(serializers.ModelSerializer):
    machine = serializers.CharField(source="machine.name")
    mac = serializers.SerializerMethodField()
    setup = serializers.UUIDField(source="setup_id", allow_null=True)
    setup_name = serializers.CharField(source="setup.name", default=None, allow_null=True)
    requested_by = serializers.CharField(source="requested_by.username", default=None)
    position = serializers.SerializerMethodField()
    images = DeploymentImageSerializer(many=True, read_only=True)

    class Meta:
        model = Deployment
        fields = [
            "id",
            "machine",
            "mac",
            "setup",
            "setup_name",
            "requested_by",
            "kind",
            "sync",
            "state",
            "position",
            "failure_reason",
            "images",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "attempt",
            "checked_in_at",
            "heartbeat_at",
        ]

    @extend_schema_field(OpenApiTypes.STR)
    def get_mac(self, deployment: Deployment) -> str | None:
        macs = list(deployment.machine.mac_addresses.all())
        return macs[0].address if macs else None

    @extend_schema_field(
        {"type": "integer", "nullable": True, "description": "1 = next (queued only)"}
    )
    def get_position(self, deployment: Deployment) -> int | None:
        if deployment.state != DeploymentState.QUEUED:
            return None
        return getattr(deployment, "position", None)


class NetworkMountSerializer(serializers.ModelSerializer):
    image = serializers.UUIDField(source="image_id", allow_null=True)
    version = serializers.IntegerField(source="version_number")
    url = serializers.SerializerMethodField()
    tls = serializers.SerializerMethodField()
    result_version = serializers.IntegerField(
        source="result_version.number",
        default=None,
        help_text="The version its changes became, once ended (null: none, or unchanged)",
    )

    class Meta:
        model = NetworkMount
        fields = [
            "image",
            "version",
            "disk",
            "state",
            "url",
            "tls",
            "error",
            "result_version",
            "ended_at",
        ]

    @extend_schema_field(
        {"type": "string", "nullable": True, "description": "nbd://host:port/export while served"}
    )
    def get_url(self, mount: NetworkMount) -> str | None:
        return mount_url(mount)

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {"identity": {"type": "string"}, "psk": {"type": "string"}},
            "description": "TLS with this pre-shared key is required (null: plain NBD)",
        }
    )
    def get_tls(self, mount: NetworkMount) -> dict[str, str] | None:
        return mount_tls(mount)


class DeploymentDetailSerializer(DeploymentOutputSerializer):
    events = DeploymentEventSerializer(many=True, read_only=True)
    network_mounts = NetworkMountSerializer(
        many=True,
        read_only=True,
        help_text="User data images served over the network instead of flashed: faster boot, "
        "slower access; their changes become new versions when the lease ends.",
    )

    class Meta(DeploymentOutputSerializer.Meta):
        fields = [*DeploymentOutputSerializer.Meta.fields, "network_mounts", "events"]
