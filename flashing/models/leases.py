"""Leases: who holds a machine (at most one active lease per machine, enforced by the
database)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from flashing.models.machines import Machine


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
