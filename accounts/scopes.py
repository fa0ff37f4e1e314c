"""What a personal access token may do: its scopes.

* ``read``: safe methods (GET, HEAD, OPTIONS) only;
* ``write``: everything the user may do, except account administration;
* ``admin``: account administration: the user's password, email and role, their
  tokens, and (for administrators) other users.

A scope never widens what the user's role allows. Sessions (the dashboard, the
admin) are not limited by scopes. API views that administer accounts say so with
``account_administration = True``; ``permissions.TokenScopes`` (a default DRF
permission, and the base of every permission class in ``accounts.permissions``) checks
each request with ``request_allowed``: that is the only place scopes are enforced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from rest_framework.permissions import SAFE_METHODS

READ = "read"
WRITE = "write"
ADMIN = "admin"
ALL: tuple[str, ...] = (READ, WRITE, ADMIN)
# New tokens, unless whoever creates one chooses otherwise.
DEFAULT: tuple[str, ...] = (READ, WRITE)
CHOICES = [
    (READ, "read: look, never change"),
    (WRITE, "write: everything but account administration"),
    (ADMIN, "admin: password, email, role, tokens and users"),
]


def normalize(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes in their canonical order; ValidationError for an unknown or no scope."""
    chosen = set(scopes)
    unknown = sorted(chosen - set(ALL))
    if unknown:
        raise ValidationError(f"Unknown scope {unknown[0]!r}: choose from read, write, admin.")
    if not chosen:
        raise ValidationError("Choose at least one scope: read, write or admin.")
    return tuple(s for s in ALL if s in chosen)


def to_text(scopes: Iterable[str]) -> str:
    """How scopes are stored: canonical order, separated by spaces."""
    return " ".join(normalize(scopes))


def from_text(text: str) -> tuple[str, ...]:
    return tuple(s for s in ALL if s in text.split())


def validate_text(text: str) -> None:
    """Model validator for the stored form."""
    normalize(text.split())


def required(request: Any, view: Any) -> str:
    """The scope a request needs."""
    if request.method in SAFE_METHODS:
        return READ
    return ADMIN if getattr(view, "account_administration", False) else WRITE


def request_allowed(request: Any, view: Any) -> tuple[bool, str]:
    """(allowed, why not): whether the token that authenticated ``request`` may make it.

    Requests without a personal access token (sessions, agents) pass: scopes
    only narrow what a token can do.
    """
    token_scopes = getattr(request.auth, "scope_list", None)
    if token_scopes is None:
        return True, ""
    need = required(request, view)
    if need in token_scopes:
        return True, ""
    has = ", ".join(token_scopes)
    return False, (
        f"This token's scopes ({has}) do not include {need!r}, which this request needs; "
        f"create a token with the {need!r} scope."
    )
