"""What flashing holds of the catalogue, told to it through ``catalogue.holders``
(registered with ``catalogue.interface.holder_register``).

The catalogue asks before it prunes, expires or deletes; the answers come from
flashing's own rows, in flashing's own states, so the catalogue never reads
them. Registered in ``FlashingConfig.ready()``.
"""

from __future__ import annotations

import uuid

from django.db.models import Min, Q

from catalogue.interface import Holder, holder_register
from catalogue.models import Image, ImageSetup, ImageType, Version
from flashing.models import (
    ACTIVE_STATES,
    LIVE_MOUNT_STATES,
    Deployment,
    DeploymentImage,
    DeploymentState,
    DiskContent,
    Machine,
    NetworkMount,
)
from flashing.services.boot import boot_image_current


def _active_deployment_images():
    return DeploymentImage.objects.filter(deployment__state__in=ACTIVE_STATES)


def image_busy(image_uuid: uuid.UUID) -> bool:
    """Whether a queued or running deployment writes or brings back this image, or a
    machine has it mounted over the network (its changes are still to come: a temporal
    image made so while mounted expires once the mount is over, as it is deleted).

    A deployment that will bring sync images back plans them only when it
    starts, from what is on its machine's disks: those images count too.
    """
    if _active_deployment_images().filter(image_id=image_uuid).exists():
        return True
    if _live_mounts().filter(image_id=image_uuid).exists():
        return True
    syncing = Deployment.objects.filter(sync=True, state__in=ACTIVE_STATES)
    return DiskContent.objects.filter(
        image_id=image_uuid, sync=True, machine__in=syncing.values("machine_id")
    ).exists()


def versions_held(image: Image) -> set[int]:
    """Ids of ``image``'s versions on a machine's disk now (flashing's record of disk
    contents), written or brought back by a queued or running deployment, the base of
    a network mount that is not over, or the boot image a machine boots now."""
    on_disk = DiskContent.objects.filter(
        Q(image=image) | Q(version__image=image), version__isnull=False
    )
    deploying = _active_deployment_images().filter(version__image=image)
    mounted = _live_mounts().filter(image=image)
    return (
        set(on_disk.values_list("version_id", flat=True))
        | set(deploying.values_list("version_id", flat=True))
        | set(mounted.values_list("version_id", flat=True))
        | _brought_back_now(image)
        | _booted_now(image)
    )


def _brought_back_now(image: Image) -> set[int]:
    """Ids of ``image``'s versions stored since a queued or running deployment that brings
    it back was queued: what it brought back is recorded on its disks only at its end, and
    a deployment bringing one image back from two disks uploads two versions (pruned to
    the latest in between, the first disk's would be gone before it is recorded). A
    person's upload meanwhile waits too; the next prune, once it ended, removes it."""
    sync = _active_deployment_images().filter(image=image, direction=DeploymentImage.Direction.SYNC)
    since = sync.aggregate(first=Min("deployment__created_at"))["first"]
    if since is None:
        return set()
    return set(
        Version.objects.filter(image=image, created_at__gte=since).values_list("pk", flat=True)
    )


def _booted_now(image: Image) -> set[int]:
    """Ids of ``image``'s versions that a machine boots over the network now (boot images)."""
    if image.type != ImageType.BOOT:
        return set()
    machines = (
        DeploymentImage.objects.filter(version__image=image, deployment__state=DeploymentState.DONE)
        .values_list("deployment__machine_id", flat=True)
        .distinct()
    )
    booted = set()
    for machine_id in machines:
        current = boot_image_current(machine_id=machine_id)
        if current is not None and current[1].version_id is not None:
            booted.add(current[1].version_id)
    return booted


def _live_mounts():
    return NetworkMount.objects.filter(state__in=LIVE_MOUNT_STATES)


def image_delete_refusal(image: Image) -> str | None:
    """A machine has the image mounted over the network: its changes are still to come."""
    if _live_mounts().filter(image=image).exists():
        return (
            f'The image "{image.name}" is mounted over the network by a machine; it can be '
            "deleted once that lease ends and its changes are stored."
        )
    return None


def setup_delete_refusal(setup: ImageSetup) -> str | None:
    """A machine's default setup, or one still waiting in a queue, is not deleted behind
    the administrators' back."""
    machines = list(Machine.objects.filter(default_setup=setup).values_list("name", flat=True))
    if machines:
        return f"This setup is the default setup of {', '.join(machines)}."
    waiting = Deployment.objects.filter(setup=setup, state__in=ACTIVE_STATES)
    ids = ", ".join(f"#{pk}" for pk in waiting.values_list("id", flat=True))
    if ids:
        return f"Deployments {ids} of this setup are queued or running; cancel them first."
    return None


def register() -> None:
    holder_register(
        Holder(
            label="flashing",
            image_busy=image_busy,
            versions_held=versions_held,
            image_delete_refusal=image_delete_refusal,
            setup_delete_refusal=setup_delete_refusal,
        )
    )
