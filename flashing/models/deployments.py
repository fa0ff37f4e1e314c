"""Deployments: setups queued for a machine, first in first out, with their progress
(``DeploymentImage``) and their log (``DeploymentEvent``); the states they go through."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from catalogue.models import Image, ImageSetup, Version, validate_target_disk
from flashing.models.leases import Lease
from flashing.models.machines import Machine


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
