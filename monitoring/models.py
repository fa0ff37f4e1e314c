"""What the Celery workers did, counted where every web worker can read it."""

from __future__ import annotations

from django.db import models


class TaskCount(models.Model):
    """How many times a task ended with an outcome, since the database was made.

    Kept in the database rather than in a worker's memory: workers run on other
    hosts than the web tier, restart, and come in several processes, and a
    Prometheus counter must only grow. One row per (task, outcome): a few dozen."""

    task = models.CharField(max_length=200)
    outcome = models.CharField(max_length=16)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "outcome"], name="monitoring_task_outcome")
        ]

    def __str__(self) -> str:
        return f"{self.task} {self.outcome}: {self.count}"
