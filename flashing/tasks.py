"""Celery tasks of the flashing app: thin adapters over the services.

Each takes IDs, is safe to run twice (the services check the state under a
row lock) and acknowledges late, so a task cut short by a worker crash runs
again; what a crash loses anyway, the watchdog (beat) picks up.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, TypedDict

from celery import Task, shared_task
from django.utils import timezone

from flashing.services.leases import leases_expire
from flashing.services.mounts import (
    network_mount_finish,
    network_mount_start,
    network_mounts_reconcile,
)
from flashing.services.pipeline import deployment_power, deployments_watchdog, machine_advance
from flashing.services.tokens import tokens_purge


class _Limits(TypedDict):
    acks_late: bool
    soft_time_limit: int
    time_limit: int


class _MountRetries(TypedDict):
    acks_late: bool
    bind: Literal[True]
    max_retries: int


LIMITS: _Limits = {"acks_late": True, "soft_time_limit": 240, "time_limit": 300}
# Network mounts decompress and upload whole images: the global (long) limits apply.
MOUNT_RETRIES: _MountRetries = {"acks_late": True, "bind": True, "max_retries": 4}
MOUNT_RETRY_SECONDS = 30


def _may_retry(task: Task[Any, Any]) -> bool:
    """Whether ``task`` has retries left (Celery reads ``max_retries=None`` as no limit)."""
    return task.max_retries is None or task.request.retries < task.max_retries


@shared_task(name="flashing.leases_expire", **LIMITS)
def leases_expire_task() -> int:
    """End the leases past their end (beat, every minute). Idempotent: ended leases stay ended."""
    return leases_expire(now=timezone.now())


@shared_task(name="flashing.machine_advance", **LIMITS)
def machine_advance_task(machine_id: int) -> str:
    """Start the machine's next deployment, or boot it into its system when idle."""
    return machine_advance(machine_id=machine_id)


@shared_task(name="flashing.deployment_power", **LIMITS)
def deployment_power_task(deployment_id: int, attempt: int) -> str:
    """Power the machine into the management OS for ``attempt`` (at most once per attempt)."""
    return deployment_power(deployment_id=deployment_id, attempt=attempt)


@shared_task(name="flashing.deployments_watchdog", **LIMITS)
def deployments_watchdog_task() -> dict[str, int]:
    """Retry or fail silent deployments; start queued ones whose start was lost (beat)."""
    counts = deployments_watchdog(now=timezone.now())
    tokens_purge(before=timezone.now() - timedelta(days=7))
    return counts


@shared_task(name="flashing.network_mount_start", **MOUNT_RETRIES)
def network_mount_start_task(self: Task[Any, str], mount_id: int) -> str:
    """Serve a network mount over NBD, or serve it again if its server died; retried on failure."""
    outcome = network_mount_start(mount_id=mount_id)
    if outcome == "failed" and _may_retry(self):
        raise self.retry(countdown=MOUNT_RETRY_SECONDS)
    return outcome


@shared_task(name="flashing.network_mount_finish", **MOUNT_RETRIES)
def network_mount_finish_task(self: Task[Any, str], mount_id: int) -> str:
    """Stop a network mount's export and store its changes as the next version; retried."""
    outcome = network_mount_finish(mount_id=mount_id)
    if outcome in ("failed", "busy") and _may_retry(self):
        raise self.retry(countdown=MOUNT_RETRY_SECONDS)
    return outcome


@shared_task(name="flashing.network_mounts_reconcile", **LIMITS)
def network_mounts_reconcile_task() -> dict[str, int]:
    """End mounts that are over, restart dead exports, resend lost steps (beat)."""
    return network_mounts_reconcile(now=timezone.now())
