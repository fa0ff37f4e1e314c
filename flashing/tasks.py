"""Celery tasks of the flashing app: thin adapters over the services."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from flashing.services.leases import leases_expire


@shared_task(name="flashing.leases_expire", acks_late=True, soft_time_limit=240, time_limit=300)
def leases_expire_task() -> int:
    """End the leases past their end (beat, every minute). Idempotent: ended leases stay ended."""
    return leases_expire(now=timezone.now())
