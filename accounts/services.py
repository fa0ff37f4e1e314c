"""Writes for users, tokens and the audit log."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Model
from rest_framework.exceptions import PermissionDenied

from accounts import rules
from accounts.models import AccessToken, AuditEvent, Role, User, token_digest


def audit_record(*, actor: Any, action: str, target: Model, **data: Any) -> AuditEvent:
    """Record that ``actor`` did ``action`` to ``target``."""
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        data=data,
    )


@transaction.atomic
def user_create(
    *,
    actor: Any,
    username: str,
    email: str,
    display_name: str = "",
    role: str = Role.USER,
    password: str | None = None,
) -> User:
    """Create a user; without a password they cannot sign in until one is set."""
    user = User(username=username, email=email, display_name=display_name, role=role)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    audit_record(actor=actor, action="user.create", target=user, role=role)
    return user


@transaction.atomic
def user_update(*, actor: Any, user: User, **fields: Any) -> User:
    """Change a user's fields; only administrators change roles."""
    password = fields.pop("password", None)
    new_role = fields.pop("role", None)
    if new_role is not None and new_role != user.role:
        if not rules.can_change_role(actor):
            raise PermissionDenied("Only administrators change roles.")
        audit_record(actor=actor, action="user.role", target=user, old=user.role, new=new_role)
        user.role = new_role
    _quota_change(actor, user, fields)
    for name, value in fields.items():
        setattr(user, name, value)
    if password:
        user.set_password(password)
    user.full_clean()
    user.save()
    audit_record(actor=actor, action="user.update", target=user, fields=sorted(fields))
    return user


def _quota_change(actor: Any, user: User, fields: dict[str, Any]) -> None:
    """Only administrators set storage quotas; each change is recorded."""
    if "storage_quota" not in fields:
        return
    new = fields.pop("storage_quota")
    if new == user.storage_quota:
        return
    if not rules.is_administrator(actor):
        raise PermissionDenied("Only administrators set storage quotas.")
    audit_record(actor=actor, action="user.quota", target=user, old=user.storage_quota, new=new)
    user.storage_quota = new


@transaction.atomic
def user_delete(*, actor: Any, user: User) -> None:
    audit_record(actor=actor, action="user.delete", target=user, username=user.username)
    user.delete()


def token_create(
    *, actor: Any, user: User, name: str, expires_at: datetime | None = None
) -> tuple[AccessToken, str]:
    """Create a token; returns it with its secret, which is never stored nor shown again."""
    secret = AccessToken.PREFIX + secrets.token_urlsafe(32)
    token = AccessToken.objects.create(
        user=user,
        name=name,
        digest=token_digest(secret),
        hint=secret[: len(AccessToken.PREFIX) + 4],
        expires_at=expires_at,
    )
    audit_record(actor=actor, action="token.create", target=token, name=name)
    return token, secret


def token_revoke(*, actor: Any, token: AccessToken) -> None:
    audit_record(actor=actor, action="token.revoke", target=token, name=token.name)
    token.delete()


def tokens_purge_expired(*, now: datetime) -> int:
    """Delete tokens that have expired; returns how many."""
    deleted, _ = AccessToken.objects.filter(expires_at__lte=now).delete()
    return deleted
