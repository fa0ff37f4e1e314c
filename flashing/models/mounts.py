"""Network mounts: user data images served to a machine over NBD instead of flashed."""

from __future__ import annotations

from django.db import models

from catalogue.models import Image, Version, validate_target_disk
from flashing.models.deployments import Deployment
from flashing.models.leases import Lease


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
