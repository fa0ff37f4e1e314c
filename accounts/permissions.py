"""DRF permission classes: a token's scopes, and the roles a whole view asks for.

They only ask ``accounts.rules``; a rule about one object is the service's to
check (``catalogue.rules``, ``flashing.rules``), not a permission class's.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts import rules, scopes


class TokenScopes(BasePermission):
    """A personal access token acts only within its scopes (``accounts.scopes``).

    First of the default permission classes, and the base of every permission
    class below: a view that declares its own permissions keeps the scope check.
    Subclasses put their own rule in ``allows``.
    """

    message = "You may not do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        allowed, why = scopes.request_allowed(request, view)
        if not allowed:
            self.message = why
            return False
        return self.allows(request, view)

    def allows(self, request: Request, view: Any) -> bool:
        return True


class IsAdministrator(TokenScopes):
    message = "Only administrators may do this."

    def allows(self, request: Request, view: Any) -> bool:
        return rules.is_administrator(request.user)


class IsModerator(TokenScopes):
    message = "Only moderators and administrators may do this."

    def allows(self, request: Request, view: Any) -> bool:
        return rules.is_moderator(request.user)
