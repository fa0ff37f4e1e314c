from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from accounts.services import tokens_purge_expired


@shared_task(name="accounts.tokens_purge_expired")
def tokens_purge_expired_task() -> int:
    return tokens_purge_expired(now=timezone.now())
