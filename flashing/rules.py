"""Who may do what with machines, leases and deployments, on ``accounts.rules``' roles.

Only flashing's services and selectors enforce them (``lease_end``,
``deployment_enqueue``, ``deployment_cancel``, ``deployment_get``, …); views,
the API, the admin and forms ask them only to decide what to show.
"""

from __future__ import annotations

from typing import Any

from accounts.rules import Actor, is_authenticated
from accounts.rules import is_administrator as is_administrator  # services ask flashing.rules
from accounts.rules import is_baas as is_baas  # services ask flashing.rules alone


def can_read_machines(user: Actor | None) -> bool:
    """Every signed-in user sees the machines, their state and who holds them."""
    return is_authenticated(user)


def can_manage_machines(user: Actor | None) -> bool:
    """Register, change and remove machines, and read their power settings."""
    return is_administrator(user)


def can_lease_machine(user: Actor | None) -> bool:
    """Whether a machine is free to lease is the services' business; any user may ask."""
    return is_authenticated(user)


def can_end_lease(user: Actor | None, lease: Any) -> bool:
    """Release a lease: its holder or an administrator."""
    return is_authenticated(user) and (lease.user_id == user.pk or is_administrator(user))


def can_deploy_on(user: Actor | None, lease: Any | None) -> bool:
    """Queue deployments on a machine: the holder of its active lease, or an administrator."""
    if not is_authenticated(user):
        return False
    return is_administrator(user) or (lease is not None and lease.user_id == user.pk)


def can_read_deployment(user: Actor | None, deployment: Any) -> bool:
    """A deployment is its requester's, and every administrator's."""
    return is_authenticated(user) and (
        deployment.requested_by_id == user.pk or is_administrator(user)
    )


def can_cancel_deployment(user: Actor | None, deployment: Any) -> bool:
    return can_read_deployment(user, deployment)
