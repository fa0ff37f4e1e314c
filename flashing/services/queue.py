"""The queue itself: put a deployment in it, or take queued ones out.

Shared by the deployment and lease services; every function expects the
machine row to be locked by its caller (``common.lock_machine``).
"""

from __future__ import annotations

from django.utils import timezone

from accounts.rules import Actor
from catalogue.models import ImageFrozen, ImageSetup
from flashing.models import (
    Deployment,
    DeploymentImage,
    DeploymentKind,
    DiskContent,
    Lease,
    Machine,
)
from flashing.services.common import actor_or_none, event_record, machine_kick


def _direction(item: ImageFrozen) -> str:
    """Network-mounted images are served over NBD (``services.mounts``), never written."""
    if item.is_network_mount:
        return DeploymentImage.Direction.MOUNT
    return DeploymentImage.Direction.WRITE


def _snapshot(deployment: Deployment, setup: ImageSetup | None) -> None:
    """Copy the setup's images into the deployment, so later edits don't change it."""
    if setup is None:
        return
    DeploymentImage.objects.bulk_create(
        DeploymentImage(
            deployment=deployment,
            direction=_direction(item),
            image=item.image,
            version=item.version,
            version_number=item.version.number,
            disk=item.disk,
            sync=item.sync,
            bytes_total=item.version.size,
        )
        for item in setup.frozen_images.all()
    )


def queue_deployment(
    *,
    actor: Actor | None,
    machine: Machine,
    setup: ImageSetup | None,
    sync: bool,
    lease: Lease | None,
    kind: str = DeploymentKind.USER,
    message: str = "",
) -> Deployment:
    """Put a deployment at the end of the machine's queue, with its images and first event.

    A reset belongs to BAAS, not to whoever ended the lease: it has no
    ``requested_by``, so only administrators may cancel it.
    """
    requested_by = actor_or_none(actor) if kind == DeploymentKind.USER else None
    deployment = Deployment.objects.create(
        machine=machine,
        setup=setup,
        lease=lease,
        requested_by=requested_by,
        kind=kind,
        sync=sync,
        layout=setup.layout if setup is not None else None,
    )
    _snapshot(deployment, setup)
    event_record(
        deployment=deployment,
        actor=actor,
        action="queued",
        message=message,
        machine=machine.name,
        setup=str(setup.pk) if setup else None,
        sync=sync,
    )
    machine_kick(machine_id=machine.pk)  # the pipeline starts it if it is the machine's next
    return deployment


def deployment_queue_reset(
    *, actor: Actor | None, machine: Machine, message: str
) -> Deployment | None:
    """Queue the reset that follows a lease: bring sync images back, flash the default setup.

    Nothing is queued for an unmanaged machine, nor for one with no default
    setup and nothing to bring back. The machine is locked by the caller.
    """
    setup = machine.default_setup
    has_sync = DiskContent.objects.filter(machine=machine, sync=True, image__isnull=False).exists()
    if not machine.managed or (setup is None and not has_sync):
        return None
    return queue_deployment(
        actor=actor,
        machine=machine,
        setup=setup,
        sync=True,
        lease=None,
        kind=DeploymentKind.RESET,
        message=message,
    )


def finish_deployment(
    deployment: Deployment, state: str, actor: Actor | None, message: str
) -> None:
    """Put a deployment in a final state, with its event. The caller set ``failure_reason``."""
    deployment.state = state
    deployment.finished_at = timezone.now()
    deployment.save(update_fields=["state", "finished_at", "updated_at", "failure_reason"])
    event_record(deployment=deployment, actor=actor, action=state, message=message)
