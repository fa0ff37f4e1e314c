"""What flashing tells ``/metrics``: machines, leases and deployments by state.

Read from the database when the endpoint is scraped (``baas_site.metrics``), so
every web worker answers the same figures and no deployment step counts anything.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from flashing.models import Deployment, DeploymentState, Lease, Machine, MachineState


def _by_state(name: str, help_text: str, rows: dict[str, int], states: list[str]):
    family = GaugeMetricFamily(name, help_text, labels=["state"])
    for state in states:
        family.add_metric([state], rows.get(state, 0))
    return family


def _counts(model) -> dict[str, int]:
    return dict(model.objects.values_list("state").annotate(n=Count("pk")).order_by())


def gauges() -> Iterator[GaugeMetricFamily]:
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
