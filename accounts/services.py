"""Writes for users, tokens and the audit log."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Model, ProtectedError, RestrictedError

from accounts import logins, ownership, rules, scopes
from accounts.exceptions import InvalidInput, NotAllowed, UserNotFound, UserOwnsThings
from accounts.models import AccessToken, AuditEvent, Role, User, token_digest
from accounts.rules import Actor


def audit_record(*, actor: Actor | None, action: str, target: Model, **data: Any) -> AuditEvent:
    """Record that ``actor`` did ``action`` to ``target`` (None: BAAS itself)."""
    return AuditEvent.objects.create(
        actor=actor if isinstance(actor, User) and actor.pk else None,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        data=data,
    )


def password_check(password: str, user: User) -> None:
    """The one check of a new password: Django's validators (``AUTH_PASSWORD_VALIDATORS``),
    as the admin's and the web forms apply them; 400 with their messages."""
    try:
        validate_password(password, user)
    except DjangoValidationError as exc:
        raise InvalidInput({"password": exc.messages}) from exc


def _check_manages(actor: Actor | None, user: User) -> None:
    """``actor`` manages ``user`` (themselves, or an administrator); the selectors' 404 if not."""
    if not (rules.is_baas(actor) or rules.can_manage_user(actor, user)):
        raise UserNotFound()


@transaction.atomic
def user_create(
    *,
    actor: Actor | None,
    username: str,
    email: str,
    display_name: str = "",
    role: str = Role.USER,
    password: str | None = None,
) -> User:
    """Create a user; without a password they cannot sign in until one is set.

    ``NotAllowed`` unless ``actor`` is an administrator (or BAAS itself, ``None``).
    """
    if not (rules.is_baas(actor) or rules.can_create_user(actor)):
        raise NotAllowed("Only administrators may do this.")
    user = User(username=username, email=email, display_name=display_name, role=role)
    if password:
        password_check(password, user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    audit_record(actor=actor, action="user.create", target=user, role=role)
    return user


def user_update(
    *,
    actor: Actor,
    user: User,
    request: Any = None,
    current_password: str | None = None,
    revoke_tokens: bool = True,
    **fields: Any,
) -> User:
    """Change a user's fields; only administrators change roles.

    A new password or email needs ``current_password`` (checked through the
    sign-in lock-out, with ``request``) unless an administrator changes another
    user. A new password ends every session of the user (Django's session hash)
    and, with ``revoke_tokens`` (the default), deletes all their tokens, the one
    making this request included. ``UserNotFound`` unless ``actor`` manages ``user``.
    """
    _check_manages(actor, user)
    if fields.get("password") or _email_changes(user, fields):
        # Outside the transaction below: a wrong guess must stay counted when it rolls back.
        _current_password_check(actor, user, request, current_password)
    return _user_update_apply(actor=actor, user=user, revoke_tokens=revoke_tokens, **fields)


@transaction.atomic
def _user_update_apply(*, actor: Actor, user: User, revoke_tokens: bool, **fields: Any) -> User:
    password = fields.pop("password", None)
    if password:
        password_check(password, user)
        user.set_password(password)
        audit_record(
            actor=actor, action="user.password", target=user, tokens_kept=not revoke_tokens
        )
        if revoke_tokens:
            tokens_revoke_all(actor=actor, user=user, why="password changed")
    new_role = fields.pop("role", None)
    if new_role is not None and new_role != user.role:
        if not rules.can_change_role(actor):
            raise NotAllowed("Only administrators change roles.")
        audit_record(actor=actor, action="user.role", target=user, old=user.role, new=new_role)
        user.role = new_role
    _quota_change(actor, user, fields)
    for name, value in fields.items():
        setattr(user, name, value)
    user.full_clean()
    user.save()
    audit_record(actor=actor, action="user.update", target=user, fields=sorted(fields))
    return user


def _email_changes(user: User, fields: dict[str, Any]) -> bool:
    return "email" in fields and fields["email"].lower() != user.email.lower()


def _current_password_check(
    actor: Actor, user: User, request: Any, current_password: str | None
) -> None:
    """400 unless ``current_password`` is ``user``'s, or an administrator changes another user."""
    if not rules.needs_current_password(actor, user):
        return
    if not current_password:
        raise InvalidInput(
            {"current_password": ["Give the current password to change the password or email."]}
        )
    if request is None:
        right = user.check_password(current_password)
    else:
        checked = logins.password_check(
            request=request, username=user.get_username(), password=current_password
        )
        right = checked is not None and checked.pk == user.pk
    if not right:
        raise InvalidInput({"current_password": ["The current password is not right."]})


def _quota_change(actor: Actor, user: User, fields: dict[str, Any]) -> None:
    """Only administrators set storage quotas; each change is recorded."""
    if "storage_quota" not in fields:
        return
    new = fields.pop("storage_quota")
    if new == user.storage_quota:
        return
    if not rules.is_administrator(actor):
        raise NotAllowed("Only administrators set storage quotas.")
    audit_record(actor=actor, action="user.quota", target=user, old=user.storage_quota, new=new)
    user.storage_quota = new


@transaction.atomic
def user_delete(*, actor: Actor, user: User, transfer_to: User | None = None) -> None:
    """Delete ``user``; 409 (``UserOwnsThings``) while they own or hold anything.

    With ``transfer_to`` (an administrator asking, naming an active administrator
    other than ``user``), their leases end first (deployments cancelled, reset
    queued) and their images, setups and deployments go to ``transfer_to``.
    ``UserNotFound`` unless ``actor`` manages ``user``.
    """
    _check_manages(actor, user)
    if transfer_to is not None:
        _heir_check(actor, user, transfer_to)
        ownership.hand_over(actor=actor, user=user, to=transfer_to)
        audit_record(actor=actor, action="user.hand_over", target=user, to=transfer_to.username)
    owns = ownership.owned(user)
    if owns:
        raise UserOwnsThings(user, owns)
    audit_record(actor=actor, action="user.delete", target=user, username=user.username)
    try:
        user.delete()
    except (ProtectedError, RestrictedError) as exc:
        # Something no app registered still points at the user: refuse, never a 500.
        kept = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
        kinds = sorted({str(o._meta.verbose_name_plural) for o in kept})
        raise UserOwnsThings(user, [f"{k} (kept by the system)" for k in kinds]) from exc


def _heir_check(actor: Actor, user: User, heir: User) -> None:
    if not rules.can_hand_over(actor):
        raise NotAllowed("Only administrators hand a user's things over.")
    if heir.pk == user.pk or not rules.is_administrator(heir):
        raise InvalidInput(
            {"transfer_to": ["Name an active administrator other than the user being deleted."]}
        )


def token_create(
    *,
    actor: Actor,
    user: User,
    name: str,
    expires_at: datetime | None = None,
    scopes_wanted: Iterable[str] = scopes.DEFAULT,
    via_token: AccessToken | None = None,
) -> tuple[AccessToken, str]:
    """Create a token; returns it with its secret, which is never stored nor shown again.

    ``via_token``: the token making the request, if one is; it creates tokens only
    with scopes it has itself (403 otherwise). Scopes default to read and write.
    ``UserNotFound`` unless ``actor`` manages ``user``.
    """
    _check_manages(actor, user)
    try:
        chosen = scopes.normalize(scopes_wanted)
    except DjangoValidationError as exc:
        raise InvalidInput({"scopes": exc.messages}) from exc
    if via_token is not None and not set(chosen) <= set(via_token.scope_list):
        raise NotAllowed(
            "A token creates tokens only with scopes it has itself; this one has: "
            f"{', '.join(via_token.scope_list)}."
        )
    secret = AccessToken.PREFIX + secrets.token_urlsafe(32)
    token = AccessToken.objects.create(
        user=user,
        name=name,
        digest=token_digest(secret),
        hint=secret[: len(AccessToken.PREFIX) + 4],
        expires_at=expires_at,
        scopes=scopes.to_text(chosen),
    )
    audit_record(actor=actor, action="token.create", target=token, name=name, scopes=chosen)
    return token, secret


def token_revoke(*, actor: Actor, token: AccessToken) -> None:
    """Delete ``token``; ``UserNotFound`` unless ``actor`` manages its user."""
    _check_manages(actor, token.user)
    audit_record(actor=actor, action="token.revoke", target=token, name=token.name)
    token.delete()


def tokens_revoke_all(*, actor: Actor, user: User, why: str) -> int:
    """Delete every token of ``user``; returns how many."""
    deleted, _ = AccessToken.objects.filter(user=user).delete()
    if deleted:
        audit_record(actor=actor, action="token.revoke_all", target=user, why=why, count=deleted)
    return deleted


def tokens_purge_expired(*, now: datetime) -> int:
    """Delete tokens that have expired; returns how many."""
    deleted, _ = AccessToken.objects.filter(expires_at__lte=now).delete()
    return deleted
