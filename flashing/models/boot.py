"""Who speaks to BAAS from a booting machine: the management agent's tokens, and the
MAC addresses of no machine that asked for a boot script (docs/security.md)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from flashing.models.deployments import Deployment
from flashing.models.machines import MAC_RE


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
