"""Agent credentials: one-time boot tokens and deployment-bound agent tokens.

Secrets are shown once (in a boot script, a power command's environment or the
check-in answer) and stored as SHA-256 digests (``accounts.models.token_digest``).
Their prefixes tell them apart from personal access tokens (``baas_``), so the
agent authentication can pass every other bearer token on untouched.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import token_digest
from flashing.models import RUNNING_STATES, AgentToken, AgentTokenKind, Deployment

PREFIXES = {AgentTokenKind.BOOT: "baasboot_", AgentTokenKind.AGENT: "baasagent_"}


def is_agent_secret(secret: str) -> bool:
    return secret.startswith(tuple(PREFIXES.values()))


def token_mint(*, deployment: Deployment, kind: str) -> str:
    """A new token for the deployment's current attempt; returns the secret (shown once).

    Boot tokens expire after ``BAAS_BOOT_TIMEOUT``; agent tokens live as long as
    the deployment runs (checked at each use).
    """
    secret = PREFIXES[kind] + secrets.token_urlsafe(32)
    expires_at = None
    if kind == AgentTokenKind.BOOT:
        expires_at = timezone.now() + timedelta(seconds=max(settings.BAAS_BOOT_TIMEOUT, 60))
    AgentToken.objects.create(
        deployment=deployment,
        kind=kind,
        digest=token_digest(secret),
        attempt=deployment.attempt,
        expires_at=expires_at,
    )
    return secret


def token_find(secret: str) -> AgentToken | None:
    """The live token with this secret: not revoked, not expired, its deployment running.

    A used boot token is still returned: ``token_consume`` refuses it, once.
    """
    token = (
        AgentToken.objects.select_related("deployment__machine")
        .filter(digest=token_digest(secret), revoked_at=None)
        .first()
    )
    if token is None or token.deployment.state not in RUNNING_STATES:
        return None
    if token.expires_at is not None and token.expires_at <= timezone.now():
        return None
    if token.attempt != token.deployment.attempt:
        return None
    return token


def token_consume(*, token: AgentToken) -> bool:
    """Use a boot token: True the first time, False ever after (one UPDATE, race-free)."""
    used = AgentToken.objects.filter(pk=token.pk, used_at=None, revoked_at=None).update(
        used_at=timezone.now()
    )
    return used == 1


def tokens_revoke(*, deployment: Deployment, kind: str | None = None) -> int:
    """Revoke the deployment's live tokens (all, or those of ``kind``)."""
    tokens = AgentToken.objects.filter(deployment=deployment, revoked_at=None)
    if kind is not None:
        tokens = tokens.filter(kind=kind)
    return tokens.update(revoked_at=timezone.now())


@transaction.atomic
def tokens_purge(*, before: datetime) -> int:
    """Delete tokens of deployments that ended before ``before``."""
    deleted, _ = AgentToken.objects.filter(deployment__finished_at__lt=before).delete()
    return deleted
