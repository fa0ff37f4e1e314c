"""Django admin for machines, leases and deployments.

Power-setting secrets are masked in lists and in the change form; sending the
mask back keeps the stored secret. States change only through actions that
call the services, so leases, queues and machine states stay consistent.
Administrators only (``baas_site.admin.AdministratorsOnly``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypedDict

from django import forms
from django.contrib import admin, messages
from django.db.models import Prefetch, QuerySet, Sum
from django.http import HttpRequest

from accounts.services import audit_record
from baas_site.admin import AdministratorsOnly
from baas_site.errors import error_text
from baas_site.exceptions import DomainError
from flashing.exceptions import MachineConflict
from flashing.models import (
    Deployment,
    DeploymentEvent,
    DeploymentImage,
    DeploymentState,
    DiskContent,
    Lease,
    MacAddress,
    Machine,
    MachineDisk,
    MachineState,
    NetworkMount,
    UnknownMac,
    mask_power_settings,
)
from flashing.services.deployments import deployment_cancel, deployment_enqueue
from flashing.services.leases import lease_end
from flashing.services.machines import machine_set_state, power_settings_merge
from flashing.services.mount_beat import network_mounts_retry
from flashing.services.mounts import network_mount_end

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class _Progress(TypedDict):
    done_bytes: int | None
    total_bytes: int | None


class MacAddressInline(admin.TabularInline):
    model = MacAddress
    extra = 1
    min_num = 1


class MachineDiskInline(admin.TabularInline):
    model = MachineDisk
    extra = 0


class DiskContentInline(admin.TabularInline):
    """What is on the disks now: written by deployments, never by hand."""

    model = DiskContent
    extra = 0
    fields = ("disk", "image", "version_number", "sync", "deployment", "written_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MachineForm(forms.ModelForm):
    """Shows power settings with their secrets masked; a mask sent back keeps the secret."""

    class Meta:
        model = Machine
        fields = [
            "name",
            "architecture",
            "managed",
            "power_driver",
            "power_settings",
            "default_setup",
            "description",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["power_settings"] = mask_power_settings(self.instance.power_settings)

    def clean_power_settings(self) -> dict:
        value = self.cleaned_data.get("power_settings") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Power settings are a JSON object.")
        stored = Machine.objects.filter(pk=self.instance.pk).values_list(
            "power_settings", flat=True
        )
        return power_settings_merge(stored.first() if self.instance.pk else {}, value)


@admin.register(Machine)
class MachineAdmin(AdministratorsOnly, admin.ModelAdmin):
    form = MachineForm
    list_display = [
        "name",
        "macs",
        "architecture",
        "state",
        "managed",
        "power_driver",
        "power_settings_masked",
        "default_setup",
        "lease_holder",
    ]
    list_filter = ["state", "architecture", "managed", "power_driver"]
    search_fields = ["name", "mac_addresses__address", "description"]
    readonly_fields = ["state", "created_at", "updated_at"]
    autocomplete_fields = []
    inlines = [MacAddressInline, MachineDiskInline, DiskContentInline]
    actions = ["end_leases", "take_out_of_service", "put_back_in_service"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Machine]:
        active = Lease.objects.filter(ended_at=None).select_related("user")
        return (
            super()
            .get_queryset(request)
            .select_related("default_setup")
            .prefetch_related(
                "mac_addresses", Prefetch("leases", queryset=active, to_attr="active_leases")
            )
        )

    @admin.display(description="MAC addresses")
    def macs(self, machine: Machine) -> str:
        return ", ".join(m.address for m in machine.mac_addresses.all())

    @admin.display(description="Power settings")
    def power_settings_masked(self, machine: Machine) -> str:
        return json.dumps(mask_power_settings(machine.power_settings), sort_keys=True)

    @admin.display(description="Leased by")
    def lease_holder(self, machine: Machine) -> str:
        leases = getattr(machine, "active_leases", [])
        return f"{leases[0].user} until {leases[0].ends_at:%Y-%m-%d %H:%M}" if leases else "—"

    def save_model(self, request: HttpRequest, obj: Machine, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        fields = [f for f in form.changed_data if f != "power_settings"]
        if "power_settings" in form.changed_data:
            fields.append("power_settings")  # the values themselves are never logged
        action = "machine.update" if change else "machine.create"
        audit_record(actor=request.user, action=action, target=obj, fields=sorted(fields))

    @admin.action(description="End the selected machines' leases (and reset them)")
    def end_leases(self, request: HttpRequest, queryset: QuerySet[Machine]) -> None:
        leases = Lease.objects.filter(machine__in=queryset, ended_at=None)
        ended = [lease_end(actor=request.user, lease=lease) for lease in leases]
        self.message_user(request, f"Ended {len(ended)} lease(s).", messages.SUCCESS)

    @admin.action(description="Take out of service (maintenance)")
    def take_out_of_service(self, request: HttpRequest, queryset: QuerySet[Machine]) -> None:
        for machine in queryset:
            machine_set_state(actor=request.user, machine=machine, state=MachineState.MAINTENANCE)

    @admin.action(description="Put back in service")
    def put_back_in_service(self, request: HttpRequest, queryset: QuerySet[Machine]) -> None:
        for machine in queryset:
            machine_set_state(actor=request.user, machine=machine, state=MachineState.AVAILABLE)


class ActiveLeaseFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Active"), ("no", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Lease]) -> QuerySet[Lease]:
        if self.value() == "yes":
            return queryset.filter(ended_at=None)
        if self.value() == "no":
            return queryset.exclude(ended_at=None)
        return queryset


@admin.register(Lease)
class LeaseAdmin(AdministratorsOnly, admin.ModelAdmin):
    """Leases are taken through the API; administrators end them here."""

    list_display = ["machine", "user", "starts_at", "ends_at", "ended_at", "end_reason"]
    list_filter = [ActiveLeaseFilter, "end_reason", "machine"]
    search_fields = ["machine__name", "user__username", "machine__mac_addresses__address"]
    list_select_related = ["machine", "user"]
    readonly_fields = ["machine", "user", "starts_at", "ended_at", "end_reason", "ended_by"]
    fields = ["machine", "user", "starts_at", "ends_at", "ended_at", "end_reason", "ended_by"]
    actions = ["end_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="End the selected leases (and reset their machines)")
    def end_selected(self, request: HttpRequest, queryset: QuerySet[Lease]) -> None:
        ended = [
            lease_end(actor=request.user, lease=lease) for lease in queryset.filter(ended_at=None)
        ]
        self.message_user(request, f"Ended {len(ended)} lease(s).", messages.SUCCESS)


class DeploymentImageInline(admin.TabularInline):
    model = DeploymentImage
    extra = 0
    fields = (
        "direction",
        "image",
        "version_number",
        "disk",
        "sync",
        "phase",
        "bytes_done",
        "bytes_total",
        "rate",
    )
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeploymentEventInline(admin.TabularInline):
    model = DeploymentEvent
    extra = 0
    fields = ("created_at", "actor", "action", "state", "message")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Deployment)
class DeploymentAdmin(AdministratorsOnly, admin.ModelAdmin):
    """The queue, read-only: deployments change state through the services only."""

    list_display = [
        "id",
        "machine",
        "setup",
        "requested_by",
        "kind",
        "sync",
        "state",
        "progress",
        "created_at",
        "finished_at",
    ]
    list_filter = ["state", "kind", "sync", "machine"]
    search_fields = ["machine__name", "requested_by__username", "setup__name", "failure_reason"]
    list_select_related = ["machine", "setup", "requested_by"]
    date_hierarchy = "created_at"
    inlines = [DeploymentImageInline, DeploymentEventInline]
    actions = ["cancel_selected", "requeue_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deployment]:
        deployments: QuerySet[Deployment] = super().get_queryset(request)
        return deployments.annotate(
            done_bytes=Sum("images__bytes_done"), total_bytes=Sum("images__bytes_total")
        )

    @admin.display(description="Progress")
    def progress(self, deployment: WithAnnotations[Deployment, _Progress]) -> str:
        total = getattr(deployment, "total_bytes", None) or 0
        if not total:
            return "—"
        return f"{100 * (deployment.done_bytes or 0) // total} %"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Deployment._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Cancel the selected queued deployments")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        cancelled = 0
        for deployment in queryset.filter(state=DeploymentState.QUEUED):
            try:
                deployment_cancel(actor=request.user, deployment=deployment)
                cancelled += 1
            except MachineConflict as exc:  # it started meanwhile
                self.message_user(request, error_text(exc), messages.WARNING)
        self.message_user(request, f"Cancelled {cancelled} deployment(s).", messages.SUCCESS)

    @admin.action(description="Queue the selected finished deployments again")
    def requeue_selected(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        """A new deployment of the same setup on the same machine, at the end of its queue."""
        queued = 0
        finished = queryset.filter(state__in=[DeploymentState.FAILED, DeploymentState.CANCELLED])
        for deployment in finished.select_related("machine", "setup"):
            if deployment.setup is None:
                self.message_user(
                    request, f"#{deployment.pk} has no setup to queue again.", messages.WARNING
                )
                continue
            try:
                deployment_enqueue(
                    actor=request.user,
                    machine=deployment.machine,
                    setup=deployment.setup,
                    sync=deployment.sync,
                )
                queued += 1
            except DomainError as exc:
                self.message_user(request, f"#{deployment.pk}: {error_text(exc)}", messages.WARNING)
        self.message_user(request, f"Queued {queued} deployment(s) again.", messages.SUCCESS)


@admin.register(UnknownMac)
class UnknownMacAdmin(AdministratorsOnly, admin.ModelAdmin):
    """MACs that asked for a boot script but belong to no machine: register them as machines."""

    list_display = ["address", "seen_count", "first_seen_at", "last_seen_at", "last_ip"]
    list_filter = ["last_seen_at"]
    search_fields = ["address", "last_ip"]
    readonly_fields = ["address", "seen_count", "first_seen_at", "last_seen_at", "last_ip"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(NetworkMount)
class NetworkMountAdmin(AdministratorsOnly, admin.ModelAdmin):
    """Network mounts, read-only: they start and end through the services and the beat."""

    list_display = [
        "id",
        "image",
        "version",
        "deployment",
        "state",
        "host",
        "port",
        "attempts",
        "result_version",
        "created_at",
        "ended_at",
    ]
    list_filter = ["state", "host"]
    search_fields = ["image__name", "deployment__machine__name", "error"]
    list_select_related = ["image", "version", "deployment", "result_version"]
    actions = ["end_selected", "retry_selected"]

    exclude = ["tls_psk"]  # a secret of the machine's

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in NetworkMount._meta.fields if f.name != "tls_psk"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="End the selected mounts now (their changes are stored)")
    def end_selected(self, request: HttpRequest, queryset: QuerySet[NetworkMount]) -> None:
        why = f"Ended by {request.user} in the admin."
        ended = sum(1 for mount in queryset if network_mount_end(mount=mount, why=why))
        self.message_user(request, f"Ending {ended} mount(s).", messages.SUCCESS)

    @admin.action(description="Retry the step the selected mounts are stuck in")
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[NetworkMount]) -> None:
        retried = network_mounts_retry(mounts=queryset)
        self.message_user(request, f"Retrying {retried} mount(s).", messages.SUCCESS)
