"""What the Celery workers tell ``/metrics``: tasks by name and outcome, read from the
database at each scrape (``baas_site.metrics``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily

from monitoring.models import TaskCount


def counters() -> Iterator[CounterMetricFamily]:
    family = CounterMetricFamily(
        "baas_celery_tasks",
        "Celery tasks ended, by task and outcome (succeeded, failed, retried).",
        labels=["task", "outcome"],
    )
    for task, outcome, count in TaskCount.objects.values_list("task", "outcome", "count"):
        family.add_metric([task, outcome], count)
    yield family
