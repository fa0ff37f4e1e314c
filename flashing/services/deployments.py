"""Writes for deployments: queue a setup on a machine, cancel it, move it along.

The queue is first in, first out per machine. Nothing here flashes: the
pipeline of the flashing issue takes the next queued deployment
(``flashing.selectors.deployment_next``), calls ``deployment_plan_sync`` and
then ``deployment_set_state`` as it goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.db import transaction

from accounts.models import User
from accounts.rules import Actor
from catalogue.interface import can_read_image, can_use_setup, version_disk_size
from catalogue.models import ImageFrozen, ImageSetup, ImageType, RawState
from diskimage import gpt
from flashing import rules
from flashing.exceptions import DeploymentNotFound, InvalidInput, MachineConflict, NotYours
from flashing.models import (
    FINAL_STATES,
    OUT_OF_SERVICE,
    Deployment,
    DeploymentImage,
    DeploymentState,
    DiskContent,
    Machine,
)
from flashing.services.common import lock, lock_machine
from flashing.services.leases import lease_current
from flashing.services.queue import queue_deployment
from flashing.services.states import deployment_set_state


def _check_machine(machine: Machine) -> None:
    if machine.state in OUT_OF_SERVICE:
        raise MachineConflict(f"{machine.name} is out of service ({machine.state}).")
    if not machine.managed:
        raise MachineConflict(f"{machine.name} is not managed by BAAS, so it cannot be flashed.")


def disk_of(path: str, disks: Iterable[str]) -> str | None:
    """The registered disk that ``path`` is, or holds as a partition, else None.

    ``/dev/sda3`` is on ``/dev/sda``, ``/dev/nvme0n1p2`` on ``/dev/nvme0n1`` (a
    disk whose name ends in a digit numbers its partitions after a ``p``).
    """
    disks = list(disks)
    if path in disks:
        return path
    for disk in disks:
        rest = path[len(disk) :] if path.startswith(disk) else ""
        if rest and re.fullmatch(r"p\d+" if disk[-1].isdigit() else r"\d+", rest):
            return disk
    return None


def _mib(size: int) -> str:
    return f"{size} bytes ({size / gpt.MIB:.1f} MiB)"


def _check_layout(machine: Machine, setup: ImageSetup, frozen: list[ImageFrozen]) -> None:
    """The setup's partition table fits the machine's disk, and each image its partition.

    The table's own rules and the partitions of a declared size were checked
    when the setup was saved (``catalogue.services.setups``); here the disk is
    known: a partition that takes the rest of the disk gets its size.
    """
    layout = setup.layout
    disks = {d.path: d.size for d in machine.disks.all()}
    if layout is None or not disks:
        return
    if layout["disk"] not in disks:
        known = ", ".join(sorted(disks))
        raise InvalidInput(
            {
                "setup": [
                    f"{machine.name} has no disk {layout['disk']} for the partition table "
                    f'of setup "{setup.name}" (it has {known}).'
                ]
            }
        )
    specs = [gpt.Spec(p["label"], p["size"], p["type"]) for p in layout["partitions"]]
    try:
        placed = {p.label: p for p in gpt.plan(disks[layout["disk"]], specs)}
    except gpt.LayoutError as exc:
        raise InvalidInput(
            {
                "setup": [
                    f'The partition table of setup "{setup.name}" does not fit '
                    f"{machine.name}:{layout['disk']}: {exc}"
                ]
            }
        ) from exc
    for item in frozen:
        partition = placed.get(item.partition) if item.partition else None
        if partition is not None and version_disk_size(item.version) > partition.size:
            raise InvalidInput(
                {
                    "setup": [
                        f'Version {item.version.number} of "{item.image.name}" is '
                        f"{_mib(version_disk_size(item.version))}; partition "
                        f"'{partition.label}' on {machine.name}:{layout['disk']} holds "
                        f"{_mib(partition.size)}."
                    ]
                }
            )


def _check_setup(machine: Machine, setup: ImageSetup) -> None:
    """The setup fits the machine's disks, and its owner may still read every image.

    A boot image takes no disk (it is served over the network); an image may
    go to a partition of a registered disk (a custom init image on /dev/sda3).
    """
    frozen = list(setup.frozen_images.all())
    if not frozen:
        raise InvalidInput({"setup": [f'Setup "{setup.name}" has no images to flash.']})
    _check_layout(machine, setup, frozen)  # first: its refusals give the numbers
    disks = {d.path: d.size for d in machine.disks.all()}
    for item in frozen:
        if not can_read_image(setup.owner, item.image):
            raise MachineConflict(
                f'{setup.owner} may no longer read "{item.image.name}" of this setup.'
            )
        if item.version.raw_state == RawState.FAILED and not item.is_network_mount:
            raise MachineConflict(
                f'"{item.image.name}" cannot be flashed: {item.version.raw_reason}'
            )
        if not disks or item.image.type == ImageType.BOOT or item.is_network_mount:
            continue  # served over the network: it takes no disk of the machine
        disk = disk_of(item.disk, disks)
        if disk is None:
            known = ", ".join(sorted(disks))
            raise InvalidInput(
                {"setup": [f"{machine.name} has no disk {item.disk} (it has {known})."]}
            )
        if version_disk_size(item.version) > disks[disk]:  # a qcow2 image fills its virtual size
            raise InvalidInput(
                {"setup": [f'"{item.image.name}" does not fit on {machine.name}:{item.disk}.']}
            )


@transaction.atomic
def deployment_enqueue(
    *, actor: Actor, machine: Machine, setup: ImageSetup, sync: bool = False
) -> Deployment:
    """Queue ``setup`` on ``machine``, behind the deployments already queued.

    400 (as for a setup that does not exist) unless ``actor`` may flash the
    setup (``catalogue.rules.can_use_setup``); ``NotYours`` (403) unless they
    hold the machine's lease or are an administrator; 409 when the machine is
    out of service or unmanaged; 400 when the setup is empty or does not fit
    the machine's disks.
    """
    if not can_use_setup(actor, setup):
        raise InvalidInput({"setup": ["No such setup, or not yours to flash."]})
    machine = lock_machine(machine)
    lease = lease_current(machine=machine)
    if not rules.can_deploy_on(actor, lease):
        raise NotYours(
            "Only the holder of this machine's lease, or an administrator, may queue on it."
        )
    _check_machine(machine)
    _check_setup(machine, setup)
    mine = lease is not None and isinstance(actor, User) and lease.user_id == actor.pk
    held = lease if mine else None
    return queue_deployment(actor=actor, machine=machine, setup=setup, sync=sync, lease=held)


@transaction.atomic
def deployment_cancel(*, actor: Actor, deployment: Deployment, why: str = "") -> Deployment:
    """Cancel an unfinished deployment, whatever its state; 409 once it has finished.

    ``DeploymentNotFound`` (404, as for one that does not exist) unless
    ``actor`` may cancel it (``rules.can_cancel_deployment``). A running one
    stops at once for BAAS (``states.deployment_set_state``): its tokens die,
    so its agent's next call is refused and it stops writing; the machine is
    powered off unless its next deployment starts (``pipeline.machine_advance``).
    """
    if not rules.can_cancel_deployment(actor, deployment):
        raise DeploymentNotFound()
    lock_machine(deployment.machine)
    deployment = lock(Deployment, deployment.pk)
    if deployment.state in FINAL_STATES:
        raise MachineConflict(f"Deployment #{deployment.pk} is {deployment.state} already.")
    return deployment_set_state(
        actor=actor,
        deployment=deployment,
        state=DeploymentState.CANCELLED,
        message=why or f"Cancelled by {actor}.",
    )


@transaction.atomic
def deployment_plan_sync(*, deployment: Deployment) -> list[DeploymentImage]:
    """Plan what to bring back: the machine's sync images as they are on its disks now.

    For the pipeline, when a deployment with ``sync`` starts (not when it is
    queued: a deployment ahead of it may change what is on the disks).
    Idempotent: planning again replaces the plan.
    """
    deployment.images.filter(direction=DeploymentImage.Direction.SYNC).delete()
    if not deployment.sync:
        return []
    on_disks = DiskContent.objects.filter(
        machine=deployment.machine, sync=True, image__isnull=False
    ).select_related("version")
    return DeploymentImage.objects.bulk_create(
        DeploymentImage(
            deployment=deployment,
            direction=DeploymentImage.Direction.SYNC,
            image_id=item.image_id,
            version=item.version,
            version_number=item.version_number,
            disk=item.disk,
            sync=True,
            bytes_total=item.version.size if item.version else 0,
        )
        for item in on_disks
    )
