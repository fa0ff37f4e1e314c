"""Counting Celery tasks as they end: ``succeeded``, ``failed`` or ``retried``.

Connected by ``baas_site.celery`` to Celery's signals, which fire in the worker
process that ran the task (and for a task run in process, as tests do). Each end
is one ``UPDATE … SET count = count + 1``: tasks here are whole-image jobs,
deployment steps and beat's periodic sweeps, not a hot path. A database that
cannot be written to loses the count, never the task: the error is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F

from monitoring.models import TaskCount

logger = logging.getLogger(__name__)
OUTCOMES = ("succeeded", "failed", "retried")


def count(task: str, outcome: str) -> None:
    """Add one to ``task``'s ``outcome``."""
    try:
        rows = TaskCount.objects.filter(task=task, outcome=outcome)
        if rows.update(count=F("count") + 1):
            return
        try:
            with transaction.atomic():
                TaskCount.objects.create(task=task, outcome=outcome, count=1)
        except IntegrityError:  # another worker made the row first
            rows.update(count=F("count") + 1)
    except DatabaseError:
        logger.warning("Could not count %s %s", task, outcome, exc_info=True)


def _name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or sender or "unknown")


def succeeded(sender: Any = None, **_: Any) -> None:
    count(_name(sender), "succeeded")


def failed(sender: Any = None, **_: Any) -> None:
    count(_name(sender), "failed")


def retried(sender: Any = None, request: Any = None, **_: Any) -> None:
    count(str(getattr(request, "task", None) or _name(sender)), "retried")


def connect_celery() -> None:
    from celery import signals

    signals.task_success.connect(succeeded, weak=False)
    signals.task_failure.connect(failed, weak=False)
    signals.task_retry.connect(retried, weak=False)
