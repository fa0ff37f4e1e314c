"""A user's leases and unfinished deployments, for deleting users (``accounts.ownership``).

A held lease cannot be handed over: it is ended through ``lease_end``, as if
released, so its deployments are cancelled and the machine's reset is queued.
"""

from __future__ import annotations

from typing import Any

from accounts import ownership
from accounts.services import audit_record
from flashing.models import FINAL_STATES, Deployment, Lease
from flashing.services.leases import lease_end


def _leases(user: Any):
    return Lease.objects.select_related("machine").filter(user=user, ended_at=None)


def _unfinished(user: Any):
    return (
        Deployment.objects.select_related("machine")
        .filter(requested_by=user)
        .exclude(state__in=FINAL_STATES)
        .order_by("created_at", "id")
    )


def flashing_owned(user: Any) -> list[str]:
    """A line per lease ``user`` holds and per deployment of theirs not yet finished."""
    leases = [
        f"lease on {x.machine.name} until {x.ends_at:%Y-%m-%d %H:%M %Z}" for x in _leases(user)
    ]
    deployments = [f"deployment #{d.pk} on {d.machine.name} ({d.state})" for d in _unfinished(user)]
    return leases + deployments


def flashing_release(actor: Any, user: Any) -> None:
    """End every lease ``user`` holds (deployments cancelled, reset queued)."""
    for lease in _leases(user):
        lease_end(actor=actor, lease=lease)


def flashing_transfer(actor: Any, user: Any, to: Any) -> None:
    """Make ``to`` the requester of ``user``'s unfinished deployments, recording each."""
    for deployment in _unfinished(user).select_for_update(of=("self",)):
        deployment.requested_by = to
        deployment.save(update_fields=["requested_by", "updated_at"])
        audit_record(
            actor=actor,
            action="deployment.hand_over",
            target=deployment,
            old=user.username,
            new=to.username,
        )


def register() -> None:
    ownership.register(
        label="flashing",
        owned=flashing_owned,
        release=flashing_release,
        transfer=flashing_transfer,
    )
