"""An import job: a registry image or a URL on its way to becoming an image's next version."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from catalogue.models import Image, Version


class Layout(models.TextChoices):
    FILESYSTEM = "filesystem", "One ext4 filesystem (boots with a boot image)"
    DISK = "disk", "A whole disk: partition table, boot partition, bootloader, root"


class Kind(models.TextChoices):
    OCI = "oci", "Container image"
    URL = "url", "Disk image at a URL"


class State(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINAL_STATES = (State.DONE, State.FAILED, State.CANCELLED)


class ImportJob(models.Model):
    """One import into ``image``; ``version`` once it is done.

    Credentials a request brought are never stored here (nor anywhere): the
    job carries only what a person may read back.
    """

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    source = models.CharField(
        max_length=2000, help_text="The registry reference (skopeo transport) or the URL"
    )
    platform = models.CharField(max_length=64, blank=True)
    layout = models.CharField(max_length=16, choices=Layout.choices, blank=True)
    size = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Bytes of the filesystem or disk to make (empty: fitted)"
    )
    label = models.CharField(max_length=16, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="Expected SHA-256 (URLs)")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    manifest_digest = models.CharField(max_length=80, blank=True)
    layers_total = models.PositiveIntegerField(default=0)
    layers_done = models.PositiveIntegerField(default=0)
    bytes_done = models.PositiveBigIntegerField(default=0)
    log = models.TextField(blank=True)
    reason = models.CharField(max_length=1000, blank=True)
    version = models.ForeignKey(
        Version, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["image", "state"])]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.source} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES
