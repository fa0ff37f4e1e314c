"""Celery tasks of the flashing app: thin adapters over the services.

Each takes IDs, is safe to run twice (the services check the state under a
row lock) and acknowledges late, so a task cut short by a worker crash runs
again; what a crash loses anyway, the watchdog (beat) picks up. All are
``baas_site.tasks.TransactionAwareTask``: sent after the commit, by reference.
The tasks a service sends are declared beside it (the pipeline's, the network
mounts'), so that it sends them without importing this module; they are named
here for Celery's autodiscovery.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from baas_site.tasks import TransactionAwareTask
from flashing.services.common import LIMITS
from flashing.services.leases import leases_expire
from flashing.services.mount_beat import network_mounts_reconcile
from flashing.services.mounts import network_mount_finish_task, network_mount_start_task
from flashing.services.pipeline import (
    deployment_power_task,
    deployments_watchdog,
    machine_advance_task,
)
from flashing.services.tokens import tokens_purge

__all__ = [
    "deployment_power_task",
    "deployments_watchdog_task",
    "leases_expire_task",
    "machine_advance_task",
    "network_mount_finish_task",
    "network_mount_start_task",
    "network_mounts_reconcile_task",
]


@shared_task(name="flashing.leases_expire", base=TransactionAwareTask, **LIMITS)
def leases_expire_task() -> int:
    """End the leases past their end (beat, every minute). Idempotent: ended leases stay ended."""
    return leases_expire(now=timezone.now())


@shared_task(name="flashing.deployments_watchdog", base=TransactionAwareTask, **LIMITS)
def deployments_watchdog_task() -> dict[str, int]:
    """Retry or fail silent deployments; start queued ones whose start was lost (beat)."""
    counts = deployments_watchdog(now=timezone.now())
    tokens_purge(before=timezone.now() - timedelta(days=7))
    return counts


@shared_task(name="flashing.network_mounts_reconcile", base=TransactionAwareTask, **LIMITS)
def network_mounts_reconcile_task() -> dict[str, int]:
    """End mounts that are over, restart dead exports, resend lost steps (beat)."""
    return network_mounts_reconcile(now=timezone.now())
