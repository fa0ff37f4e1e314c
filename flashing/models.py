"""Machines, their leases, and the deployments queued on them.

State lives in three places, each with one job:

* ``Lease`` says who holds a machine (at most one active lease per machine,
  enforced by the database);
* ``Deployment`` is a setup queued for a machine, first in first out, with its
  progress (``DeploymentImage``) and its log (``DeploymentEvent``);
* ``Machine.state`` summarises both for people: ``available`` or ``leased``
  when idle, ``deploying`` while the pipeline runs one, and ``error`` or
  ``maintenance`` when administrators (or failures) take it out of service.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from catalogue.models import Image, ImageSetup, Version, validate_target_disk

# Six bytes written as aa:bb:cc:dd:ee:ff, AA-BB-CC-DD-EE-FF, aabb.ccdd.eeff or aabbccddeeff.
_MAC_FORMS = (
    re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}\Z"),
    re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}\Z"),
    re.compile(r"^[0-9a-f]{12}\Z"),
)
MAC_RE = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z"
SECRET_MASK = "********"  # noqa: S105 -- the mask shown instead of a secret
# A power setting whose name contains one of these is a secret.
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential")


def normalize_mac(value: str) -> str:
    """The one home of the MAC rule: any common form in, ``aa:bb:cc:dd:ee:ff`` out.

    Raises ``ValidationError`` for anything that is not six bytes of hex.
    """
    text = str(value or "").strip().lower()
    if not any(form.match(text) for form in _MAC_FORMS):
        raise ValidationError(
            f"'{value}' is not a MAC address: use a form such as aa:bb:cc:dd:ee:ff.",
            code="invalid_mac",
        )
    digits = re.sub(r"[^0-9a-f]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def is_secret_setting(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def mask_power_settings(values: dict | None) -> dict:
    """Power settings safe to show: every secret's value replaced by ``SECRET_MASK``."""
    return {
        name: SECRET_MASK if is_secret_setting(name) and value not in ("", None) else value
        for name, value in (values or {}).items()
    }


class Architecture(models.TextChoices):
    X86_64 = "x86_64", "x86-64"
    AARCH64 = "aarch64", "AArch64"
    RISCV64 = "riscv64", "RISC-V 64"
    PPC64LE = "ppc64le", "POWER (little-endian)"
    ARMV7L = "armv7l", "ARMv7"


class MachineState(models.TextChoices):
    AVAILABLE = "available", "Available"
    LEASED = "leased", "Leased"
    DEPLOYING = "deploying", "Deploying"
    ERROR = "error", "Error"
    MAINTENANCE = "maintenance", "Maintenance"


# States in which nobody may lease or flash the machine.
OUT_OF_SERVICE = (MachineState.ERROR, MachineState.MAINTENANCE)
# The states administrators set by hand: out of service, or back (to what the facts say).
SERVICE_STATES = [
    (MachineState.AVAILABLE.value, "Back in service"),
    (MachineState.MAINTENANCE.value, MachineState.MAINTENANCE.label),
    (MachineState.ERROR.value, MachineState.ERROR.label),
]


class PowerDriver(models.TextChoices):
    MANUAL = "manual", "Manual (a person powers it)"
    IPMI = "ipmi", "IPMI (ipmitool)"
    REDFISH = "redfish", "Redfish"
    COMMAND = "command", "Command"
    QEMU = "qemu", "QEMU virtual machine"


class Machine(models.Model):
    """A lab machine BAAS can lease and flash; found by any of its MAC addresses."""

    name = models.CharField(max_length=100, unique=True)
    architecture = models.CharField(
        max_length=16, choices=Architecture.choices, default=Architecture.X86_64
    )
    managed = models.BooleanField(
        default=True, help_text="BAAS powers and flashes it; unmanaged machines are only leased."
    )
    state = models.CharField(
        max_length=16, choices=MachineState.choices, default=MachineState.AVAILABLE
    )
    power_driver = models.CharField(
        max_length=16, choices=PowerDriver.choices, default=PowerDriver.MANUAL
    )
    power_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="Driver settings (host, username, password, command…); secrets are masked.",
    )
    default_setup = models.ForeignKey(
        ImageSetup,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="default_for_machines",
        help_text="Flashed when a lease ends, so every user starts from a known state.",
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.power_settings, dict):
            raise ValidationError({"power_settings": "Power settings are a JSON object."})


class MacAddress(models.Model):
    """One network interface of a machine; stored in ``aa:bb:cc:dd:ee:ff`` form."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="mac_addresses")
    address = models.CharField(max_length=17, unique=True)

    class Meta:
        ordering = ["machine", "id"]
        verbose_name = "MAC address"
        verbose_name_plural = "MAC addresses"
        constraints = [
            models.CheckConstraint(
                condition=Q(address__regex=MAC_RE), name="flashing_mac_normalised"
            ),
        ]

    def __str__(self) -> str:
        return self.address

    def clean(self) -> None:
        try:
            self.address = normalize_mac(self.address)
        except ValidationError as exc:
            raise ValidationError({"address": exc.messages}) from exc


class MachineDisk(models.Model):
    """A disk of a machine that images may be written to."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="disks")
    path = models.CharField(max_length=255, validators=[validate_target_disk])
    size = models.PositiveBigIntegerField(help_text="Capacity in bytes")

    class Meta:
        ordering = ["machine", "path"]
        constraints = [
            models.UniqueConstraint(fields=["machine", "path"], name="flashing_disk_once"),
        ]

    def __str__(self) -> str:
        return f"{self.machine}:{self.path}"


class DiskContent(models.Model):
    """What is on one disk of a machine now, from its last successful deployment.

    ``version_number`` survives the version's deletion, so the history stays
    readable; ``sync`` says whether the disk is brought back before the next
    flash or at the end of a lease.
    """

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="disk_contents")
    disk = models.CharField(max_length=255, validators=[validate_target_disk])
    image = models.ForeignKey(
        Image, null=True, on_delete=models.SET_NULL, related_name="on_machine_disks"
    )
    version = models.ForeignKey(Version, null=True, on_delete=models.SET_NULL, related_name="+")
    version_number = models.PositiveIntegerField()
    sync = models.BooleanField(default=False)
    deployment = models.ForeignKey(
        "Deployment", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    written_at = models.DateTimeField()

    class Meta:
        ordering = ["machine", "disk"]
        constraints = [
            models.UniqueConstraint(fields=["machine", "disk"], name="flashing_disk_content_once"),
        ]

    def __str__(self) -> str:
        return f"{self.machine}:{self.disk} v{self.version_number}"


class LeaseEndReason(models.TextChoices):
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"


class Lease(models.Model):
    """A user's turn on a machine, from ``starts_at`` until ``ends_at`` or release."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="leases")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=LeaseEndReason.choices, blank=True)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["-starts_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["machine"],
                condition=Q(ended_at__isnull=True),
                name="flashing_one_active_lease_per_machine",
            ),
            models.CheckConstraint(
                condition=Q(ends_at__gt=models.F("starts_at")), name="flashing_lease_ends_after"
            ),
        ]
        indexes = [
            models.Index(
                fields=["ends_at"],
                condition=Q(ended_at__isnull=True),
                name="flashing_lease_active_ends",
            )
        ]

    def __str__(self) -> str:
        return f"{self.machine} → {self.user}"

    @property
    def is_active(self) -> bool:
        return self.ended_at is None


class DeploymentState(models.TextChoices):
    QUEUED = "queued", "Queued"
    BOOTING = "booting", "Booting the management OS"
    SYNCING = "syncing", "Bringing user data back"
    WRITING = "writing", "Writing images"
    VERIFYING = "verifying", "Verifying"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


RUNNING_STATES = (
    DeploymentState.BOOTING,
    DeploymentState.SYNCING,
    DeploymentState.WRITING,
    DeploymentState.VERIFYING,
)
FINAL_STATES = (DeploymentState.DONE, DeploymentState.FAILED, DeploymentState.CANCELLED)
# A deployment in these states still needs its setup and images (queued, or running).
ACTIVE_STATES = (DeploymentState.QUEUED, *RUNNING_STATES)


class DeploymentKind(models.TextChoices):
    USER = "user", "Requested by a user"
    RESET = "reset", "Reset at the end of a lease"


class Deployment(models.Model):
    """A setup queued for a machine. The queue is first in, first out: by ``created_at``, ``id``.

    ``sync`` brings the machine's sync images back before writing. A reset
    deployment with no setup only brings them back. The images to write are
    copied from the setup into ``DeploymentImage`` rows when it is queued, so
    later edits of the setup do not change a deployment already in the queue.
    """

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="deployments")
    setup = models.ForeignKey(
        ImageSetup, null=True, blank=True, on_delete=models.SET_NULL, related_name="deployments"
    )
    lease = models.ForeignKey(
        Lease, null=True, blank=True, on_delete=models.SET_NULL, related_name="deployments"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployments",
    )
    kind = models.CharField(max_length=8, choices=DeploymentKind.choices, default="user")
    sync = models.BooleanField(default=False)
    # The setup's partition table when it was queued (catalogue.layouts), for the agent.
    layout = models.JSONField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=DeploymentState.choices, default=DeploymentState.QUEUED
    )
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The pipeline's bookkeeping (flashing.services.pipeline): which boot attempt
    # runs, when its power-on was asked for, whether the power driver was called
    # for it (at most once per attempt; this arms the attempt), whether its one
    # boot token was handed out (flashing.services.boot), and when the agent last
    # spoke.
    attempt = models.PositiveSmallIntegerField(default=0)
    booted_at = models.DateTimeField(null=True, blank=True)
    powered_attempt = models.PositiveSmallIntegerField(default=0)
    boot_token_attempt = models.PositiveSmallIntegerField(
        default=0, help_text="The last attempt whose one boot token was handed out"
    )
    checked_in_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["machine", "state", "created_at", "id"])]
        constraints = [
            models.UniqueConstraint(
                fields=["machine"],
                condition=Q(state__in=RUNNING_STATES),
                name="flashing_one_running_deployment_per_machine",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.machine} {self.state}"


class DeploymentImage(models.Model):
    """One image of a deployment: written to ``disk``, (``direction=sync``) read back,
    or (``direction=mount``) served to the machine over the network (``NetworkMount``)."""

    class Direction(models.TextChoices):
        WRITE = "write", "Write to the disk"
        SYNC = "sync", "Bring back from the disk"
        MOUNT = "mount", "Serve over the network (NBD)"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="images")
    direction = models.CharField(max_length=8, choices=Direction.choices, default="write")
    image = models.ForeignKey(Image, null=True, on_delete=models.SET_NULL, related_name="+")
    version = models.ForeignKey(Version, null=True, on_delete=models.SET_NULL, related_name="+")
    version_number = models.PositiveIntegerField()
    disk = models.CharField(max_length=255, validators=[validate_target_disk])
    sync = models.BooleanField(default=False, help_text="Brought back after use")
    bytes_done = models.PositiveBigIntegerField(default=0)
    bytes_total = models.PositiveBigIntegerField(default=0)
    phase = models.CharField(max_length=16, blank=True, help_text="The agent's last phase")
    rate = models.FloatField(default=0.0, help_text="Bytes per second, from the last reports")
    progress_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "id"]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.direction} {self.disk}"


class DeploymentEvent(models.Model):
    """The log of a deployment: who did what, when, and why."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=DeploymentState.choices, blank=True)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"


class NetworkMountState(models.TextChoices):
    STARTING = "starting", "Starting the export"
    READY = "ready", "Served"
    ENDING = "ending", "Stopping, storing the changes"
    DONE = "done", "Ended"
    FAILED = "failed", "Failed (files kept)"


# Mounts whose server runs, or may run, and whose files are on disk.
LIVE_MOUNT_STATES = (NetworkMountState.STARTING, NetworkMountState.READY, NetworkMountState.ENDING)


class NetworkMount(models.Model):
    """A user data image served to a machine over NBD instead of flashed.

    The server exports a private copy-on-write overlay (qcow2) over a
    read-only copy of the pinned version; when the mount ends, a change in the
    overlay becomes the image's next version (``result_version``). The files
    live under ``directory`` on ``host``, the server that runs the export.
    """

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="network_mounts"
    )
    lease = models.ForeignKey(
        Lease,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="network_mounts",
        help_text="The mount ends with this lease (or when the next deployment starts).",
    )
    # Kept while the mount is live (retention and image deletion check for it);
    # afterwards the history survives the image's deletion, like DeploymentImage.
    image = models.ForeignKey(
        Image, null=True, on_delete=models.SET_NULL, related_name="network_mounts"
    )
    version = models.ForeignKey(
        Version,
        null=True,
        on_delete=models.SET_NULL,
        related_name="network_mounts",
        help_text="The pinned version: the read-only base of the overlay.",
    )
    version_number = models.PositiveIntegerField()
    disk = models.CharField(max_length=255, validators=[validate_target_disk])
    export_name = models.CharField(max_length=64, unique=True, editable=False)
    tls_psk = models.CharField(
        max_length=64, blank=True, editable=False, help_text="TLS pre-shared key (hex), if required"
    )
    host = models.CharField(max_length=255, blank=True, help_text="Where the server runs")
    port = models.PositiveIntegerField(null=True, blank=True)
    directory = models.CharField(max_length=1000, blank=True, help_text="Base and overlay")
    pid = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=NetworkMountState.choices, default=NetworkMountState.STARTING
    )
    error = models.TextField(blank=True, help_text="Why the last step failed")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Failed steps so far")
    result_version = models.ForeignKey(
        Version,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version the changes were stored as (empty: none, or unchanged)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True, help_text="First served")
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return f"{self.image_id} v{self.version_number} → deployment #{self.deployment_id}"


class AgentTokenKind(models.TextChoices):
    BOOT = "boot", "One-time boot token"
    AGENT = "agent", "Deployment-bound agent token"


class AgentToken(models.Model):
    """A credential of the management agent; only its SHA-256 is stored.

    A *boot* token is minted once per boot attempt (in the first iPXE script of
    an armed attempt, or the ``command`` power driver's environment) and
    accepted once, at check-in, where it is exchanged for an *agent* token
    bound to the deployment and the attempt. Both die with the deployment, or
    when a newer attempt revokes them (docs/security.md).
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="tokens")
    kind = models.CharField(max_length=8, choices=AgentTokenKind.choices)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    attempt = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "id"]

    def __str__(self) -> str:
        return f"{self.kind} token of deployment #{self.deployment_id}"


class UnknownMac(models.Model):
    """A MAC address that asked for a boot script but belongs to no machine.

    Anyone can fetch boot scripts, so these rows are bounded: at most
    ``BAAS_UNKNOWN_MACS_MAX`` of them (the least recently seen dropped first),
    each updated at most once per ``BAAS_UNKNOWN_MAC_INTERVAL``
    (``flashing.services.boot.unknown_mac_record``).
    """

    address = models.CharField(max_length=17, unique=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    seen_count = models.PositiveIntegerField(default=1)
    last_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        indexes = [models.Index(fields=["last_seen_at"]), models.Index(fields=["first_seen_at"])]
        verbose_name = "unknown MAC address"
        constraints = [
            models.CheckConstraint(
                condition=Q(address__regex=MAC_RE), name="flashing_unknown_mac_normalised"
            ),
        ]

    def __str__(self) -> str:
        return self.address
