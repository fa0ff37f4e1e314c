"""Writes for leases: taking turns on a machine.

A user leases an available machine for ``hours`` (``BAAS_LEASE_DEFAULT_HOURS``
when not given); the same call by the holder extends it, as long as the whole
lease stays within ``BAAS_LEASE_MAX_HOURS`` of its start. When a lease ends —
released, or expired and found by ``leases_expire`` (Celery beat) or by the
next request on the machine — its deployments are cancelled, queued or running, a reset
is queued (sync images back, default setup flashed), its network mounts end
(their changes stored as new versions) and the machine is free for the next user.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.rules import Actor
from accounts.services import audit_record
from flashing import rules
from flashing.exceptions import InvalidInput, MachineConflict, NotYours
from flashing.models import (
    FINAL_STATES,
    OUT_OF_SERVICE,
    DeploymentState,
    Lease,
    LeaseEndReason,
    Machine,
)
from flashing.services.common import actor_or_none, lock, lock_machine
from flashing.services.machines import machine_settle_state
from flashing.services.mounts import network_mounts_end
from flashing.services.queue import deployment_queue_reset
from flashing.services.states import deployment_set_state


def lease_limits() -> tuple[int, int]:
    """(default, maximum) lease length in hours, from the settings administrators set."""
    return settings.BAAS_LEASE_DEFAULT_HOURS, settings.BAAS_LEASE_MAX_HOURS


def _check_hours(hours: int) -> None:
    _, maximum = lease_limits()
    if not 1 <= hours <= maximum:
        raise InvalidInput({"hours": [f"A lease lasts from 1 to {maximum} hours."]})


def lease_current(*, machine: Machine, now: datetime | None = None) -> Lease | None:
    """The machine's active lease; one past its end is ended (expired) on the way.

    The machine must be locked by the caller's transaction.
    """
    now = now or timezone.now()
    lease = Lease.objects.select_related("user").filter(machine=machine, ended_at=None).first()
    if lease is not None and lease.ends_at <= now:
        _end(actor=None, machine=machine, lease=lease, reason=LeaseEndReason.EXPIRED, now=now)
        return None
    return lease


def _start(*, user: User, machine: Machine, hours: int, now: datetime) -> Lease:
    if machine.state in OUT_OF_SERVICE:
        raise MachineConflict(f"{machine.name} is out of service ({machine.state}).")
    lease = Lease.objects.create(
        machine=machine, user=user, starts_at=now, ends_at=now + timedelta(hours=hours)
    )
    audit_record(actor=user, action="lease.start", target=lease, machine=machine.name, hours=hours)
    machine_settle_state(actor=user, machine=machine)
    return lease


def _extend(*, user: Actor | None, lease: Lease, hours: int) -> Lease:
    _, maximum = lease_limits()
    ends_at = lease.ends_at + timedelta(hours=hours)
    latest = lease.starts_at + timedelta(hours=maximum)
    if ends_at > latest:
        until = f"{latest:%Y-%m-%d %H:%M %Z}"
        message = f"A lease lasts at most {maximum} hours: it can end at {until} at the latest."
        raise InvalidInput({"hours": [message]})
    lease.ends_at = ends_at
    lease.save(update_fields=["ends_at"])
    audit_record(actor=user, action="lease.extend", target=lease, ends_at=ends_at.isoformat())
    return lease


@transaction.atomic
def lease_acquire(
    *, user: Actor | None, machine: Machine, hours: int | None = None, now: datetime | None = None
) -> tuple[Lease, bool]:
    """Lease ``machine`` to ``user``, or extend the lease they hold; returns (lease, created).

    409 when someone else holds it or it is out of service; 400 for hours
    outside 1..maximum, or an extension past the maximum; ``NotYours`` unless
    ``user`` may lease machines at all (``rules.can_lease_machine``).
    """
    if not rules.can_lease_machine(user) or not isinstance(user, User):
        raise NotYours("Only signed-in users lease machines.")
    now = now or timezone.now()
    hours = lease_limits()[0] if hours is None else hours
    _check_hours(hours)
    machine = lock_machine(machine)
    lease = lease_current(machine=machine, now=now)
    if lease is None:
        return _start(user=user, machine=machine, hours=hours, now=now), True
    if lease.user_id != user.pk:
        raise MachineConflict(
            f"{machine.name} is leased by {lease.user} until {lease.ends_at:%Y-%m-%d %H:%M %Z}."
        )
    return _extend(user=user, lease=lease, hours=hours), False


def _cancel_deployments(*, actor: Actor | None, lease: Lease, why: str) -> list[int]:
    """Cancel every unfinished deployment of ``lease``, queued or running.

    A deployment lives no longer than the lease it was asked for under: its
    tokens die with it, so the machine serves nothing of it to the next user.
    """
    cancelled = []
    for deployment in lease.deployments.exclude(state__in=FINAL_STATES).order_by("id"):
        deployment_set_state(
            actor=actor, deployment=deployment, state=DeploymentState.CANCELLED, message=why
        )
        cancelled.append(deployment.pk)
    return cancelled


def _end(
    *, actor: Actor | None, machine: Machine, lease: Lease, reason: str, now: datetime
) -> None:
    lease.ended_at = now
    lease.end_reason = reason
    lease.ended_by = actor_or_none(actor)
    lease.save(update_fields=["ended_at", "end_reason", "ended_by"])
    audit_record(actor=actor, action=f"lease.{reason}", target=lease, machine=machine.name)
    why = f"{lease.user}'s lease ended ({reason})."
    _cancel_deployments(actor=actor, lease=lease, why=why)
    network_mounts_end(lease=lease, why=why)
    deployment_queue_reset(actor=actor, machine=machine, message=f"Reset: {why}")
    machine_settle_state(actor=actor, machine=machine)


@transaction.atomic
def lease_end(
    *,
    actor: Actor | None,
    lease: Lease,
    reason: str = LeaseEndReason.RELEASED,
    now: datetime | None = None,
) -> Lease:
    """End ``lease`` now: cancel its deployments, end its mounts, queue the reset, free the machine.

    Idempotent: a lease already ended is left as it is. ``NotYours`` unless
    ``actor`` is the holder or an administrator (``rules.can_end_lease``), or
    BAAS itself (``actor=None``: the lease expired, its holder was deleted).
    """
    if not (rules.is_baas(actor) or rules.can_end_lease(actor, lease)):
        raise NotYours("Only the lease holder or an administrator may release it.")
    machine = lock_machine(lease.machine)
    lease = lock(Lease, lease.pk)
    if lease.ended_at is None:
        _end(actor=actor, machine=machine, lease=lease, reason=reason, now=now or timezone.now())
    return lease


def leases_expire(*, now: datetime) -> int:
    """End every lease past its end; returns how many. Each in its own transaction."""
    expired = Lease.objects.filter(ended_at=None, ends_at__lte=now).values_list("pk", flat=True)
    count = 0
    for pk in list(expired):
        lease = Lease.objects.select_related("machine", "user").get(pk=pk)
        if lease.ended_at is None:
            lease_end(actor=None, lease=lease, reason=LeaseEndReason.EXPIRED, now=now)
            count += 1
    return count
