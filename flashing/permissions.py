"""DRF permission classes of the machine routes, on ``flashing.rules``."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request

from accounts.permissions import TokenScopes
from flashing import rules


class CanManageMachines(TokenScopes):
    """Reads for every signed-in user; writes for administrators."""

    message = "Only administrators may register, change or remove machines."

    def allows(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return rules.can_read_machines(request.user)
        return rules.can_manage_machines(request.user)
