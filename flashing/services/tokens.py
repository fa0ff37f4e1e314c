"""Agent credentials: one-time boot tokens and deployment-bound agent tokens.

Secrets are shown once (in a boot script, a power command's environment or the
check-in answer) and stored as SHA-256 digests (``accounts.models.token_digest``).
Their prefixes tell them apart from personal access tokens (``baas_``), so the
agent authentication can pass every other bearer token on untouched.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import token_digest
from flashing.models import (
    FINAL_STATES,
    RUNNING_STATES,
    AgentToken,
    AgentTokenKind,
    Deployment,
)

PREFIXES: dict[str, str] = {AgentTokenKind.BOOT: "baasboot_", AgentTokenKind.AGENT: "baasagent_"}


def is_agent_secret(secret: str) -> bool:
    return secret.startswith(tuple(PREFIXES.values()))


def token_mint(*, deployment: Deployment, kind: str) -> str:
    """A new token for the deployment's current attempt; returns the secret (shown once).

    Boot tokens expire after ``BAAS_BOOT_TIMEOUT``; agent tokens live as long as
    the deployment's attempt runs (checked at each use). The caller decides
    that a token may be minted at all: one boot token per attempt
    (``flashing.services.boot``), one agent token per check-in.
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


class TokenVerdict(StrEnum):
    """What a presented agent secret is worth (``token_check``)."""

    LIVE = "live"  # a token of the running attempt: let it through
    GONE = "gone"  # a token of the last attempt of a finished deployment: 410, stop
    INVALID = "invalid"  # unknown, revoked, expired or of an older attempt: 401


def token_check(secret: str) -> tuple[AgentToken | None, TokenVerdict]:
    """The token with this secret and what it is worth.

    A token is *live* when it is not revoked, not expired, of the deployment's
    current attempt, and the deployment runs. A token of a finished
    deployment's last attempt is *gone* (revoked or not): the agent should
    stop, not retry. Everything else is *invalid*. A used boot token is still
    live: ``token_consume`` refuses it, once.
    """
    token = (
        AgentToken.objects.select_related("deployment__machine")
        .filter(digest=token_digest(secret))
        .first()
    )
    if token is None:
        return None, TokenVerdict.INVALID
    deployment = token.deployment
    if token.attempt != deployment.attempt:
        return token, TokenVerdict.INVALID
    if deployment.state in FINAL_STATES:
        return token, TokenVerdict.GONE
    if token.revoked_at is not None or deployment.state not in RUNNING_STATES:
        return token, TokenVerdict.INVALID
    if token.expires_at is not None and token.expires_at <= timezone.now():
        return token, TokenVerdict.INVALID
    return token, TokenVerdict.LIVE


def token_find(secret: str) -> AgentToken | None:
    """The live token with this secret (``token_check``), else None."""
    token, verdict = token_check(secret)
    return token if verdict == TokenVerdict.LIVE else None


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
