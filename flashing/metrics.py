"""What flashing tells ``/metrics``: machines, leases and deployments by state, how long
finished deployments took, and how many wait in each machine's queue.

Read from the database when the endpoint is scraped (``baas_site.metrics``), so
every web worker answers the same figures and no deployment step counts anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from flashing.models import (
    FINAL_STATES,
    Deployment,
    DeploymentState,
    Lease,
    Machine,
    MachineState,
)

# Seconds from a deployment's start (its machine began to boot) to its end.
DURATION_BUCKETS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


def _by_state(name: str, help_text: str, rows: dict[str, int], states: list[str]):
    family = GaugeMetricFamily(name, help_text, labels=["state"])
    for state in states:
        family.add_metric([state], rows.get(state, 0))
    return family


def _counts(model) -> dict[str, int]:
    return dict(model.objects.values_list("state").annotate(n=Count("pk")).order_by())


def gauges() -> Iterator[Metric]:
    yield _by_state(
        "baas_machines", "Machines, by state.", _counts(Machine), list(MachineState.values)
    )
    yield _by_state(
        "baas_deployments",
        "Deployments, by state (finished ones included, until they are deleted).",
        _counts(Deployment),
        list(DeploymentState.values),
    )
    active = GaugeMetricFamily("baas_leases_active", "Leases not ended yet.")
    active.add_metric([], Lease.objects.filter(ended_at__isnull=True).count())
    yield active
    yield _queues()
    yield _durations()


def _queues() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "baas_machine_queue",
        "Deployments waiting in each machine's queue (not started yet).",
        labels=["machine"],
    )
    waiting = Count("deployments", filter=Q(deployments__state=DeploymentState.QUEUED))
    for name, queued in Machine.objects.annotate(queued=waiting).values_list("name", "queued"):
        family.add_metric([name], queued)
    return family


def _durations() -> HistogramMetricFamily:
    """Finished deployments' durations, by how they ended, from their rows' times."""
    family = HistogramMetricFamily(
        "baas_deployment_duration_seconds",
        "Time from a deployment's start to its end, by final state (every finished one kept).",
        labels=["state"],
    )
    took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    finished = Deployment.objects.filter(
        state__in=FINAL_STATES, started_at__isnull=False, finished_at__isnull=False
    ).annotate(took=took)
    buckets = {
        f"le{i}": Count("pk", filter=Q(took__lte=timedelta(seconds=limit)))
        for i, limit in enumerate(DURATION_BUCKETS)
    }
    rows = finished.values("state").annotate(n=Count("pk"), total=Sum("took"), **buckets)
    by_state = {row["state"]: row for row in rows.order_by()}
    for state in FINAL_STATES:
        row = by_state.get(state)
        counts = [row[f"le{i}"] if row else 0 for i in range(len(DURATION_BUCKETS))]
        total = row["total"].total_seconds() if row and row["total"] is not None else 0.0
        family.add_metric(
            [str(state)],
            [*((str(limit), n) for limit, n in zip(DURATION_BUCKETS, counts, strict=True)),
             ("+Inf", row["n"] if row else 0)],
            total,
        )  # fmt: skip
    return family
