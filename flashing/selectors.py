"""Reads for machines, leases and deployments, prefetched so lists cost a fixed few queries."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery

from accounts.models import User
from accounts.rules import Actor
from flashing import rules
from flashing.exceptions import DeploymentNotFound, InvalidInput, MachineNotFound, NotYours
from flashing.models import (
    Deployment,
    DeploymentState,
    DiskContent,
    Lease,
    MacAddress,
    Machine,
    normalize_mac,
)


def mac_check(mac: str) -> str:
    """A MAC from a URL, normalised; 400 when it is not one."""
    try:
        return normalize_mac(mac)
    except DjangoValidationError as exc:
        raise InvalidInput({"mac": exc.messages}) from exc


def machine_list(*, state: str | None = None) -> QuerySet[Machine]:
    """Machines with their MACs, disks, disk contents and active lease: six queries in all.

    The active lease is in ``machine.active_leases`` (a list of at most one).
    """
    machines = Machine.objects.select_related("default_setup").prefetch_related(
        Prefetch("mac_addresses", queryset=MacAddress.objects.order_by("id")),
        "disks",
        Prefetch(
            "disk_contents", queryset=DiskContent.objects.select_related("image").order_by("disk")
        ),
        Prefetch(
            "leases",
            queryset=Lease.objects.filter(ended_at=None).select_related("user"),
            to_attr="active_leases",
        ),
    )
    if state:  # the machines page's own filter; the API's is flashing.filters
        machines = machines.filter(state=state)
    return machines.order_by("name")


def machine_get(*, mac: str) -> Machine:
    """The machine with this MAC address (any common form); 400 if malformed, 404 if unknown."""
    address = mac_check(mac)
    machine = machine_list().filter(mac_addresses__address=address).first()
    if machine is None:
        raise MachineNotFound(f"No machine has the MAC address {address}.")
    return machine


def lease_active(*, machine: Machine) -> Lease | None:
    """The machine's lease that has not ended (it may be past its end until beat ends it)."""
    if hasattr(machine, "active_leases"):
        return machine.active_leases[0] if machine.active_leases else None
    return Lease.objects.select_related("user").filter(machine=machine, ended_at=None).first()


def _queue_position() -> Subquery:
    """1 for the next deployment of its machine, 2 for the one after, … (queued ones only)."""
    ahead = (
        Deployment.objects.filter(machine=OuterRef("machine"), state=DeploymentState.QUEUED)
        .filter(
            Q(created_at__lt=OuterRef("created_at"))
            | Q(created_at=OuterRef("created_at"), id__lte=OuterRef("id"))
        )
        .order_by()
        .values("machine")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Subquery(ahead)


def deployment_queryset() -> QuerySet[Deployment]:
    return (
        Deployment.objects.select_related("machine", "setup", "requested_by")
        .prefetch_related(
            Prefetch("machine__mac_addresses", queryset=MacAddress.objects.order_by("id")),
            "images",
        )
        .annotate(position=_queue_position())
    )


def deployment_list(*, user: Actor, machine: Machine | None = None) -> QuerySet[Deployment]:
    """The deployments ``user`` requested (all of them for administrators), newest first."""
    deployments = deployment_queryset()
    if not rules.is_administrator(user):
        # Only a person requests deployments; an agent or a visitor has none.
        if isinstance(user, User):
            deployments = deployments.filter(requested_by=user)
        else:
            deployments = deployments.none()
    if machine is not None:
        deployments = deployments.filter(machine=machine)
    return deployments.order_by("-created_at", "-id")


def deployment_get(*, user: Actor, deployment_id: int) -> Deployment:
    """One deployment with its event log, if ``user`` may read it; 404 otherwise."""
    deployment = (
        deployment_queryset()
        .prefetch_related(
            "events__actor",
            "network_mounts__image",
            "network_mounts__result_version",
        )
        .filter(pk=deployment_id)
        .first()
    )
    if deployment is None or not rules.can_read_deployment(user, deployment):
        raise DeploymentNotFound()
    return deployment


def deployment_next_seen_by(*, actor: Actor, machine: Machine) -> Deployment | None:
    """``deployment_next``, for the lease holder and administrators; ``NotYours`` otherwise."""
    if not rules.can_deploy_on(actor, lease_active(machine=machine)):
        raise NotYours("Only the lease holder or an administrator sees the queue.")
    return deployment_next(machine=machine)


def deployment_next(*, machine: Machine) -> Deployment | None:
    """The machine's next deployment: the oldest queued one (first in, first out)."""
    return (
        deployment_queryset()
        .filter(machine=machine, state=DeploymentState.QUEUED)
        .order_by("created_at", "id")
        .first()
    )
