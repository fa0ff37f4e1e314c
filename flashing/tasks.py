"""Celery tasks of the flashing app: thin adapters over the services.

Each takes IDs, is safe to run twice (the services check the state under a
row lock) and acknowledges late, so a task cut short by a worker crash runs
again; what a crash loses anyway, the watchdog (beat) picks up.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from flashing.services.leases import leases_expire
from flashing.services.pipeline import deployment_power, deployments_watchdog, machine_advance
from flashing.services.tokens import tokens_purge

LIMITS = {"acks_late": True, "soft_time_limit": 240, "time_limit": 300}


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
