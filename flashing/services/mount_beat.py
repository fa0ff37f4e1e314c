"""The network mounts' beat and an administrator's retry: end the mounts that are over, check
the served ones, send lost steps again (``flashing.services.mounts`` has the steps)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from flashing.models import LIVE_MOUNT_STATES, Deployment, DeploymentState, NetworkMount
from flashing.services.mounts import ENDING, READY, SERVED, STALE, network_mount_end, send_step


def _why_over(mount: NetworkMount) -> str | None:
    """Why a served mount should end now, or None while its machine may use it."""
    if mount.lease is not None and mount.lease.ended_at is not None:
        return f"{mount.lease.user}'s lease ended."
    deployment = mount.deployment
    if deployment.state in (DeploymentState.FAILED, DeploymentState.CANCELLED):
        return f"Deployment #{deployment.pk} is {deployment.state}."
    later = Deployment.objects.filter(machine_id=deployment.machine_id, pk__gt=deployment.pk)
    if later.exclude(started_at=None).exists():
        return f"A later deployment started on {deployment.machine.name}."
    return None


def network_mounts_retry(*, mounts: QuerySet[NetworkMount]) -> int:
    """Send the step each live mount is in again (an administrator's retry); returns how many."""
    live = list(mounts.filter(state__in=LIVE_MOUNT_STATES).values_list("pk", "state"))
    for pk, state in live:
        step = "finish" if state == ENDING else "start"
        send_step(step, mount_id=pk)
    return len(live)


def _backoff(attempts: int) -> timedelta:
    """How long a starting or ending mount waits before its step is sent again.

    Doubles with each failure (up to about two hours), so a mount whose
    changes cannot be stored yet (a full quota) does not flood its event log.
    """
    factor: int = 2 ** min(attempts, 6)
    return STALE * factor


def network_mounts_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """End the mounts that are over; check the served ones; resend lost starts and ends."""
    now = now or timezone.now()
    counts = {"ended": 0, "checked": 0, "resent": 0}
    served = NetworkMount.objects.filter(state__in=SERVED)
    for mount in served.select_related("lease__user", "deployment__machine"):
        why = _why_over(mount)
        if why is not None and network_mount_end(mount=mount, why=why):
            counts["ended"] += 1
    for mount in NetworkMount.objects.filter(state__in=LIVE_MOUNT_STATES):
        if mount.state == READY:
            send_step("start", mount_id=mount.pk)  # restarts a dead server
            counts["checked"] += 1
        elif now - mount.updated_at > _backoff(mount.attempts):
            step = "finish" if mount.state == ENDING else "start"
            send_step(step, mount_id=mount.pk)
            counts["resent"] += 1
    return counts
