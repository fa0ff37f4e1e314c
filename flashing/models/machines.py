"""Machines: their MAC addresses, disks and what those disks hold now.

The one home of the MAC rule (``normalize_mac``) and of which power
settings are secrets (``mask_power_settings``).
"""

from __future__ import annotations

import re

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
