"""The one way BAAS sends Celery tasks: after the transaction commits, with one set of retries.

Every task of every app is declared with ``base=TransactionAwareTask`` and sent by
reference (``some_task.delay(...)``, never by its name as a string). Sent inside an
atomic block, the message leaves only once the transaction commits, so no worker
ever reads a row that is then rolled back or not yet visible; sent outside one, it
leaves at once. A message that cannot leave after the commit (the broker is down) is
logged, not raised: the request that committed has succeeded, and each app's sweep
(beat) sends again what was lost. (The pattern is pretix's ``TransactionAwareTask``.)

The retry options live here, once: a task retries by itself, with backoff and jitter,
when the database connection fails (the database may come back); a task adds the
errors of its own domain that are worth another try with ``autoretry_for``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Task
from django.db import InterfaceError, OperationalError, transaction

# Worth another try later: the database may recover.
TRANSIENT = (OperationalError, InterfaceError)


class TransactionAwareTask(Task):
    """A task sent once the current transaction commits, acknowledged late, retried on
    transient errors (``TRANSIENT`` and a subclass's own) with exponential backoff."""

    acks_late = True
    autoretry_for: tuple[type[BaseException], ...] = TRANSIENT
    retry_backoff = 15
    retry_backoff_max = 900
    retry_jitter = True
    max_retries = 8

    def apply_async(self, args: Any = None, kwargs: Any = None, *more: Any, **options: Any) -> Any:
        """Send now outside a transaction (the AsyncResult), else once it commits (None)."""
        if not transaction.get_connection().in_atomic_block:
            return super().apply_async(args, kwargs, *more, **options)
        # robust: a send that fails after the commit is logged, and the other callbacks run.
        transaction.on_commit(
            partial(super().apply_async, args, kwargs, *more, **options), robust=True
        )
        return None
