"""The catalogue: images, their versions on disk, and setups of pinned versions."""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from diskimage import gpt

# A block device or partition: /dev/sda, /dev/sda2, /dev/nvme0n1p2, /dev/disk/by-id/…
TARGET_DISK_RE = re.compile(r"^/dev/[A-Za-z0-9][A-Za-z0-9_.:+-]*(/[A-Za-z0-9][A-Za-z0-9_.:+-]*)*\Z")


def validate_target_disk(value: str) -> None:
    """One home for the rule: serializers, admin forms and ``clean()`` all call it."""
    if not TARGET_DISK_RE.match(value or "") or "/../" in f"{value}/" or len(value) > 255:
        raise ValidationError(
            f"'{value}' is not a disk: use a device path such as /dev/sda or /dev/nvme0n1p2.",
            code="invalid_disk",
        )


# A name appears in /api/user/<name>/images/<image name>: one path segment, printable.
IMAGE_NAME_RE = re.compile(r"^[^/\x00-\x1f\x7f]+\Z")


def validate_image_name(value: str) -> None:
    """One home for the rule: serializers, admin forms and ``clean()`` all call it."""
    if not IMAGE_NAME_RE.match(value or "") or not value.strip():
        raise ValidationError(
            "An image name is printable text without '/', and not only spaces.",
            code="invalid_name",
        )


class ImageType(models.TextChoices):
    SINGLE = "single", "Single"
    BOOT = "boot", "Boot"
    SYSTEM = "system", "System"
    USER_DATA = "user_data", "User data"
    TEMPORAL = "temporal", "Temporal"
    CUSTOM_INIT = "custom_init", "Custom init"


class FileStandard(models.TextChoices):
    RAW = "raw", "Raw"
    QCOW2 = "qcow2", "QCOW2"


class Compression(models.TextChoices):
    NONE = "none", "None"
    GZIP = "gzip", "gzip"
    ZSTD = "zstd", "zstd"


class RawState(models.TextChoices):
    """Where a qcow2 version's raw rendition (``catalogue.services.renditions``) stands."""

    NONE = "", "None (a raw image is its own raw disk)"
    PENDING = "pending", "Being made"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class TransferProtocol(models.TextChoices):
    HTTP = "http", "HTTP"


class Mount(models.TextChoices):
    """How a setup puts an image on a machine: written to its disk, or served over the network."""

    FLASH = "flash", "Flashed onto the disk"
    NETWORK = "network", "Mounted over the network (NBD)"


# Shown wherever a user chooses how an image is mounted (setup page, API schema, admin).
MOUNT_HELP = (
    "User data images only. Flashed: written to the machine's disk before it boots, "
    "read back after use. Mounted over the network: nothing is written, so the machine "
    "boots sooner, but every read and write crosses the network (slower than a local disk); "
    "the server keeps the changes and stores them as the image's next version when the "
    "lease ends."
)


class Image(models.Model):
    """An image; its type, format and target hold for every version."""

    uuid = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, validators=[validate_image_name])
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="images"
    )
    description = models.TextField(blank=True)
    type = models.CharField(max_length=16, choices=ImageType.choices, default=ImageType.SINGLE)
    file_standard = models.CharField(
        max_length=8, choices=FileStandard.choices, default=FileStandard.RAW
    )
    compression = models.CharField(
        max_length=8, choices=Compression.choices, default=Compression.NONE
    )
    target_disk = models.CharField(
        max_length=255, default="/dev/sda", validators=[validate_target_disk]
    )
    transfer_protocol = models.CharField(
        max_length=8, choices=TransferProtocol.choices, default=TransferProtocol.HTTP
    )
    associated_images = models.ManyToManyField("self", symmetrical=False, blank=True)
    maintainers = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="maintained_images",
        help_text="Moderators who may change this system image.",
    )
    # Lifecycle (catalogue.services.lifecycle): when a temporal image is deleted,
    # and how many of the latest versions any image keeps.
    expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Temporal images only: deleted, with their files, after this moment.",
    )
    keep_versions = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Keep only this many of the latest versions (empty: keep every version). "
        "Versions pinned by a setup or on a machine's disk are always kept.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "created_at"]
        indexes = [
            models.Index(fields=["owner", "name"]),
            models.Index(fields=["type"]),
            models.Index(fields=["expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.uuid})"


class Version(models.Model):
    """Version ``number`` of an image, stored at ``<root>/<image uuid>/<number>.img[.zst|.gz]``.

    ``size`` and ``sha256`` describe the raw (uncompressed) bytes — for a qcow2
    image, the qcow2 file itself — and ``virtual_size`` the disk it fills once
    written (qcow2's virtual size; equal to ``size`` for raw). ``stored_size``
    and ``stored_compression`` describe the file as it is on disk now. A qcow2
    version also has a raw rendition (``raw_*``): what agents write and
    ``?format=raw`` serves.
    """

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    size = models.PositiveBigIntegerField(help_text="Logical size of the raw image in bytes")
    sha256 = models.CharField(
        max_length=64,
        blank=True,
        db_index=True,
        help_text="SHA-256 of the raw bytes; empty for the seconds a background job takes "
        "to compute it after a large upload",
    )
    damaged = models.CharField(
        max_length=500,
        blank=True,
        help_text="Why the stored file cannot be trusted: it no longer holds what was "
        "uploaded (empty: it can)",
    )
    virtual_size = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes the image fills on a disk: the virtual size of a qcow2 image, "
        "the size of a raw one (empty if unknown)",
    )
    # A qcow2 version's raw rendition: the disk it describes, made by qemu-img beside it
    # (``<n>.raw``, catalogue.services.renditions); ``virtual_size`` bytes long.
    raw_state = models.CharField(
        max_length=8,
        choices=RawState.choices,
        blank=True,
        default=RawState.NONE,
        help_text="qcow2 images only: whether the raw disk the version describes is ready",
    )
    raw_sha256 = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of the raw rendition, once it is ready"
    )
    raw_reason = models.CharField(
        max_length=500, blank=True, help_text="Why the raw rendition could not be made"
    )
    stored_size = models.PositiveBigIntegerField(help_text="Bytes allocated on disk")
    stored_compression = models.CharField(
        max_length=8, choices=Compression.choices, default=Compression.NONE
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=500, blank=True)
    # A delta upload (catalogue.services.uploads.compose) names the version its changes are
    # against: this one is that version's bytes plus the changes, whatever came in between.
    # A number, not a key: the base may be deleted later, and its number is never reused
    # (this version's is higher).
    based_on = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The version this one was composed from, by a delta upload of the changes "
        "against it (empty: uploaded whole)",
    )
    # Provenance of an imported version (imports/): the registry reference and the
    # digest of the manifest it was made from, with its platform; or the URL and the
    # SHA-256 it was checked against. Empty for uploads.
    source_reference = models.CharField(max_length=2000, blank=True)
    source_digest = models.CharField(max_length=80, blank=True, db_index=True)
    source_platform = models.CharField(max_length=64, blank=True)
    source_url = models.CharField(max_length=2000, blank=True)
    source_sha256 = models.CharField(max_length=64, blank=True)
    # Background processing (digest, compression, map; catalogue.services.processing):
    # a job is owed while ``job_sent_at`` is set, and the sweep sends it again if it died.
    job_sent_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its processing job was last queued (empty: none owed)",
    )
    job_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When a processing job last began on it"
    )
    job_resends = models.PositiveSmallIntegerField(
        default=0, help_text="Times its processing job was sent again after a worker died"
    )

    class Meta:
        ordering = ["image", "number"]
        constraints = [
            models.UniqueConstraint(fields=["image", "number"], name="catalogue_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.image.name} v{self.number}"


class ImageSetup(models.Model):
    """A named list of images pinned at versions, flashed together."""

    uuid = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="image_setups"
    )
    description = models.TextField(blank=True)
    # A GPT for one disk whose partitions the setup's images are pinned to by label
    # (catalogue.layouts: {"disk": ..., "partitions": [{"label", "size", "type"}]}).
    layout = models.JSONField(
        null=True,
        blank=True,
        help_text="A partition table for one disk: each partition's label, size in bytes "
        "(null: the rest of the disk, last partition only) and type (empty: no table).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "created_at"]

    def __str__(self) -> str:
        return self.name

    def partition_device(self, label: str) -> str | None:
        """The device path of the layout's partition ``label`` (/dev/sda2), or None."""
        for number, item in enumerate((self.layout or {}).get("partitions") or [], 1):
            if item.get("label") == label:
                return gpt.partition_path(self.layout["disk"], number)  # type: ignore[index]
        return None


class ImageFrozen(models.Model):
    """One image pinned at one version inside a setup.

    ``target_disk`` overrides the image's own when set; ``sync`` uploads the
    disk back as the image's next version after use. ``mount`` says whether the
    image is flashed onto the disk or served to the machine over the network
    (user data images only; ``flashing.services.mounts``).
    """

    setup = models.ForeignKey(ImageSetup, on_delete=models.CASCADE, related_name="frozen_images")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="frozen_in")
    version = models.ForeignKey(Version, on_delete=models.PROTECT, related_name="frozen_in")
    sync = models.BooleanField(default=False)
    target_disk = models.CharField(max_length=255, blank=True, validators=[validate_target_disk])
    mount = models.CharField(
        max_length=8, choices=Mount.choices, default=Mount.FLASH, help_text=MOUNT_HELP
    )
    partition = models.CharField(
        max_length=gpt.MAX_LABEL,
        blank=True,
        help_text="The label of the partition of the setup's partition table it is written "
        "into (empty: its target disk).",
    )

    class Meta:
        ordering = ["setup", "id"]
        constraints = [
            models.UniqueConstraint(fields=["setup", "image"], name="catalogue_frozen_image_once"),
        ]

    def __str__(self) -> str:
        return f"{self.setup}: {self.image.name} v{self.version.number}"

    @property
    def disk(self) -> str:
        if self.partition:
            device = self.setup.partition_device(self.partition)
            if device is not None:
                return device
        return self.target_disk or self.image.target_disk

    @property
    def is_network_mount(self) -> bool:
        return self.mount == Mount.NETWORK

    def clean(self) -> None:
        if self.version_id and self.image_id and self.version.image_id != self.image_id:
            raise ValidationError({"version": "This version belongs to another image."})
        if self.image_id:
            validate_mount(self.image.type, self.mount)


def validate_mount(image_type: str, mount: str) -> None:
    """One home for the rule: only user data images may be mounted over the network."""
    if mount not in Mount.values:
        choices = ", ".join(f"'{value}'" for value in Mount.values)
        message = f"'{mount}' is not a way to mount an image: use {choices}."
        raise ValidationError({"mount": message})
    if mount == Mount.NETWORK and image_type != ImageType.USER_DATA:
        raise ValidationError(
            {
                "mount": "Only user data images can be mounted over the network; "
                "this one is flashed onto the disk."
            }
        )


class UploadState(models.TextChoices):
    RECEIVING = "receiving", "Receiving"
    COMPLETE = "complete", "Complete"
    EXPIRED = "expired", "Expired"
    FAILED = "failed", "Failed"


class ResumableUpload(models.Model):
    """An upload resource (draft-ietf-httpbis-resumable-upload): the bytes of a coming version
    received over several requests, in a ``.part`` file until the last one: kept as sent, or
    (``decoded`` not null: an Android sparse image) decoded as it arrives into the raw image.

    ``offset`` is what the server acknowledged (synced to that file); ``stored`` the bytes
    it takes on disk, counted in the owner's quota while ``receiving``. ``decoded`` holds the
    decoder's, map's and checks' state at ``offset`` (a checkpoint), ``probes_asked`` and
    ``probes_answered`` let a HEAD ask a running append for one. A row outlives its
    bytes as a tombstone (``complete``, ``expired``, ``failed``) for a while, so a client
    learns what became of it (catalogue.services.uploads.resumable).
    """

    token = models.CharField(max_length=64, unique=True)
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="resumable_uploads")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="resumable_uploads"
    )
    state = models.CharField(
        max_length=10, choices=UploadState.choices, default=UploadState.RECEIVING
    )
    offset = models.PositiveBigIntegerField(default=0, help_text="Bytes as sent, acknowledged")
    length = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Upload-Length: all the bytes as sent, if announced"
    )
    stored = models.PositiveBigIntegerField(default=0, help_text="Bytes allocated on disk")
    encoding = models.CharField(
        max_length=8, blank=True, help_text="As the creation request declared it (empty: sniffed)"
    )
    expected_sha256 = models.CharField(max_length=64, blank=True)
    want_digest = models.BooleanField(default=False)
    note = models.CharField(max_length=500, blank=True)
    version = models.ForeignKey(
        Version, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=500, blank=True, help_text="Why it failed")
    decoded = models.JSONField(
        null=True, blank=True, help_text="Decoded as it arrives: the state at the offset"
    )
    probes_asked = models.PositiveIntegerField(default=0)
    probes_answered = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField(help_text="When its bytes go if nothing more arrives")

    class Meta:
        indexes = [models.Index(fields=["state", "expires_at"])]

    def __str__(self) -> str:
        return f"upload {self.token[:8]}… to {self.image_id} ({self.state}, {self.offset} bytes)"
