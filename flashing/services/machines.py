"""Writes for machines: register, change, remove, and keep their state consistent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.rules import Actor
from accounts.services import audit_record
from catalogue.models import ImageSetup
from flashing import rules
from flashing.exceptions import MachineConflict as Conflict
from flashing.exceptions import NotYours
from flashing.models import (
    LIVE_MOUNT_STATES,
    OUT_OF_SERVICE,
    RUNNING_STATES,
    SECRET_MASK,
    Deployment,
    DeploymentState,
    DiskContent,
    Lease,
    MacAddress,
    Machine,
    MachineDisk,
    MachineState,
    NetworkMount,
    is_secret_setting,
)
from flashing.services.common import disk_writes, event_record, lock_machine, overlaps

# Fields an administrator sets directly.
PLAIN_FIELDS = ("name", "architecture", "managed", "power_driver", "description")


@dataclass(frozen=True)
class DiskSpec:
    path: str
    size: int


def power_settings_merge(old: dict | None, new: dict) -> dict:
    """``new``, where a secret sent back as ``SECRET_MASK`` keeps its stored value.

    Clients and the admin form only ever see masked secrets; sending the mask
    back means "unchanged".
    """
    old = old or {}
    return {
        name: old.get(name, "") if is_secret_setting(name) and value == SECRET_MASK else value
        for name, value in new.items()
    }


def _check_unique(*, name: str | None, macs: list[str] | None, exclude: int | None) -> None:
    others = Machine.objects.all()
    taken = MacAddress.objects.filter(address__in=macs or [])
    if exclude is not None:  # the machine being changed
        others = others.exclude(pk=exclude)
        taken = taken.exclude(machine_id=exclude)
    if name is not None and others.filter(name=name).exists():
        raise Conflict(f'A machine named "{name}" is already registered.')
    for mac in taken.select_related("machine")[:1]:
        raise Conflict(f"MAC address {mac.address} already belongs to {mac.machine.name}.")


def _set_macs(machine: Machine, macs: list[str]) -> None:
    machine.mac_addresses.exclude(address__in=macs).delete()
    existing = set(machine.mac_addresses.values_list("address", flat=True))
    MacAddress.objects.bulk_create(
        [MacAddress(machine=machine, address=mac) for mac in macs if mac not in existing]
    )


def _set_disks(machine: Machine, disks: list[DiskSpec]) -> None:
    machine.disks.all().delete()
    MachineDisk.objects.bulk_create(
        [MachineDisk(machine=machine, path=d.path, size=d.size) for d in disks]
    )


def _apply(machine: Machine, fields: dict[str, Any]) -> None:
    for name in PLAIN_FIELDS:
        if name in fields:
            setattr(machine, name, fields[name])
    if "power_settings" in fields:
        machine.power_settings = power_settings_merge(
            machine.power_settings, fields["power_settings"]
        )
    if "default_setup" in fields:
        machine.default_setup = fields["default_setup"]


def _save_related(machine: Machine, fields: dict[str, Any]) -> None:
    try:
        with transaction.atomic():
            machine.full_clean(exclude=["default_setup"])
            machine.save()
            if "mac_addresses" in fields:
                _set_macs(machine, fields["mac_addresses"])
            if "disks" in fields:
                _set_disks(machine, fields["disks"])
    except IntegrityError as exc:  # a concurrent registration took the name or a MAC
        raise Conflict("The name or a MAC address was registered at the same time.") from exc


def _check_manages(actor: Actor | None) -> None:
    if not (rules.is_baas(actor) or rules.can_manage_machines(actor)):
        raise NotYours("Only administrators may register, change or remove machines.")


@transaction.atomic
def machine_create(
    *,
    actor: Actor | None,
    name: str,
    mac_addresses: list[str],
    disks: Sequence[DiskSpec] = (),
    default_setup: ImageSetup | None = None,
    **fields: Any,
) -> Machine:
    """Register a machine. MACs are normalised already (``normalize_mac``); 409 if taken.

    ``NotYours`` unless ``actor`` is an administrator (``rules.can_manage_machines``).
    """
    _check_manages(actor)
    _check_unique(name=name, macs=mac_addresses, exclude=None)
    machine = Machine()
    values = {
        **fields,
        "name": name,
        "mac_addresses": mac_addresses,
        "disks": list(disks),
        "default_setup": default_setup,
    }
    _apply(machine, values)
    _save_related(machine, values)
    audit_record(actor=actor, action="machine.create", target=machine, name=name)
    return machine


@transaction.atomic
def machine_update(*, actor: Actor | None, machine: Machine, **fields: Any) -> Machine:
    """Change the given fields; ``mac_addresses`` and ``disks``, when given, replace the lists.

    ``state`` may be set to ``maintenance`` or ``error`` (out of service), or
    back to ``available``, which settles to what the leases and queue say.
    ``NotYours`` unless ``actor`` is an administrator.
    """
    _check_manages(actor)
    machine = lock_machine(machine)
    _check_unique(name=fields.get("name"), macs=fields.get("mac_addresses"), exclude=machine.pk)
    _apply(machine, fields)
    _save_related(machine, fields)
    audit_record(actor=actor, action="machine.update", target=machine, fields=sorted(fields))
    if "state" in fields:
        machine_set_state(actor=actor, machine=machine, state=fields["state"])
    return machine


@transaction.atomic
def machine_delete(*, actor: Actor | None, machine: Machine) -> None:
    """Remove a machine with its leases and history; 409 while a deployment runs on it,
    or while one of its network mounts is served or storing its changes. ``NotYours``
    unless ``actor`` is an administrator."""
    _check_manages(actor)
    machine = lock_machine(machine)
    if machine.deployments.filter(state__in=RUNNING_STATES).exists():
        raise Conflict(f"A deployment is running on {machine.name}; wait for it or cancel it.")
    mounts = NetworkMount.objects.filter(deployment__machine=machine, state__in=LIVE_MOUNT_STATES)
    if mounts.exists():
        raise Conflict(
            f"{machine.name} has a user data image mounted over the network; end its lease "
            "and let its changes be stored first."
        )
    audit_record(actor=actor, action="machine.delete", target=machine, name=machine.name)
    machine.delete()


def _settled_state(machine: Machine) -> str:
    if machine.deployments.filter(state__in=RUNNING_STATES).exists():
        return MachineState.DEPLOYING
    if Lease.objects.filter(machine=machine, ended_at__isnull=True).exists():
        return MachineState.LEASED
    return MachineState.AVAILABLE


def _change_state(actor: Actor | None, machine: Machine, state: str) -> None:
    if state == machine.state:
        return
    old, machine.state = machine.state, state
    machine.save(update_fields=["state", "updated_at"])
    audit_record(actor=actor, action="machine.state", target=machine, old=old, new=state)


def machine_settle_state(*, actor: Actor | None, machine: Machine) -> Machine:
    """Set ``state`` from the facts: deploying, leased or available.

    Out-of-service machines (error, maintenance) stay so until an
    administrator puts them back. Call inside the transaction that changed a
    lease or a deployment, with the machine locked.
    """
    if machine.state not in OUT_OF_SERVICE:
        _change_state(actor, machine, _settled_state(machine))
    return machine


def machine_set_state(*, actor: Actor | None, machine: Machine, state: str) -> Machine:
    """An administrator takes a machine out of service, or puts it back (``available``).

    ``NotYours`` for anyone else (BAAS itself, ``actor=None``, may too).
    """
    _check_manages(actor)
    if state in OUT_OF_SERVICE:
        _change_state(actor, machine, state)
    else:
        _change_state(actor, machine, _settled_state(machine))
    return machine


@transaction.atomic
def disk_contents_record(*, deployment: Deployment) -> list[DiskContent]:
    """Record what a successful deployment wrote: one row per disk, replacing the old one.

    For the flashing pipeline, when a deployment is done.
    """
    rows = []
    now = timezone.now()
    for item in disk_writes(deployment):
        row, _ = DiskContent.objects.update_or_create(
            machine=deployment.machine,
            disk=item.disk,
            defaults={
                "image": item.image,
                "version": item.version,
                "version_number": item.version_number,
                "sync": item.sync,
                "deployment": deployment,
                "written_at": now,
            },
        )
        rows.append(row)
    return rows


def disk_contents_forget(*, deployment: Deployment) -> list[str]:
    """A deployment that began writing and did not finish leaves its disks unknown.

    Forget what was recorded on the disks it writes (they hold part of one
    image and part of another), on their partitions, and on the whole disk of a
    partition it writes, so no later deployment takes them for what they held:
    a reset does not bring a half-overwritten disk back as user data. A deployment
    that never began writing (cancelled while booting or bringing user data back)
    left its disks as they were: nothing is forgotten.
    Returns the disks forgotten.
    """
    if not deployment.events.filter(action=DeploymentState.WRITING).exists():
        return []
    disks = list(disk_writes(deployment).values_list("disk", flat=True))
    forgotten = [  # a disk half-written, its partitions, a partition's whole disk
        row
        for row in DiskContent.objects.filter(machine=deployment.machine)
        if any(overlaps(row.disk, disk) for disk in disks)
    ]
    names = sorted(row.disk for row in forgotten)
    if names:
        DiskContent.objects.filter(pk__in=[row.pk for row in forgotten]).delete()
        event_record(
            deployment=deployment,
            actor=None,
            action="disks_unknown",
            message=f"What is on {', '.join(names)} is unknown now: the flash did not finish.",
        )
    return names
