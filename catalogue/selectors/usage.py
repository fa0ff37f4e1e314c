"""Storage used on disk, per image and per user, and what keeps images and versions alive.

Usage counts ``Version.stored_size``: the bytes allocated on disk for each
version's file (``st_blocks * 512``, recorded when the file is committed and
again when a compression job swaps it), so sparse holes cost nothing and a
compressed version counts as compressed. Files still being uploaded are not
counted. An image is charged to its owner, whoever uploaded its versions.

The flashing app's models are looked up by name: flashing imports the
catalogue, never the other way round.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.apps import apps
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from accounts.models import User
from catalogue.models import Image, ImageFrozen, ImageType, Version

# Deployment states (flashing.models) in which a deployment still needs its images.
ACTIVE_DEPLOYMENT_STATES = ("queued", "booting", "syncing", "writing", "verifying")


@dataclass(frozen=True)
class UserUsage:
    used: int
    quota: int | None
    images: QuerySet[Image]


def images_with_usage(images: QuerySet[Image]) -> QuerySet[Image]:
    """``images`` annotated with ``storage_used`` (bytes on disk) and ``version_count``."""
    return images.annotate(
        storage_used=Coalesce(Sum("versions__stored_size"), 0),
        version_count=Count("versions"),
    )


def user_storage_used(*, user: User | int) -> int:
    """Bytes on disk taken by every version of every image ``user`` owns."""
    owner_id = getattr(user, "pk", user)
    total = Version.objects.filter(image__owner_id=owner_id).aggregate(
        used=Coalesce(Sum("stored_size"), 0)
    )
    return int(total["used"])


def user_usage(*, user: User) -> UserUsage:
    """``user``'s storage: bytes used, their quota (None: no limit), and each image's share.

    Two queries whatever the number of images. The caller has checked that
    the actor may see this user (``rules.can_manage_user``).
    """
    images = images_with_usage(Image.objects.filter(owner=user)).order_by("name", "created_at")
    return UserUsage(used=user_storage_used(user=user), quota=user.storage_quota, images=images)


# --- What is in use ---------------------------------------------------------------------


def _active_deployment_images():
    deployment_image = apps.get_model("flashing", "DeploymentImage")
    return deployment_image.objects.filter(deployment__state__in=ACTIVE_DEPLOYMENT_STATES)


def image_in_active_deployment(*, image_uuid: uuid.UUID) -> bool:
    """Whether a queued or running deployment writes or brings back this image.

    A deployment that will bring sync images back plans them only when it
    starts, from what is on its machine's disks: those images count too.
    """
    if _active_deployment_images().filter(image_id=image_uuid).exists():
        return True
    disk_content = apps.get_model("flashing", "DiskContent")
    syncing_machines = apps.get_model("flashing", "Deployment").objects.filter(
        sync=True, state__in=ACTIVE_DEPLOYMENT_STATES
    )
    return disk_content.objects.filter(
        image_id=image_uuid, sync=True, machine__in=syncing_machines.values("machine_id")
    ).exists()


def versions_kept_of(*, image: Image) -> set[int]:
    """Ids of ``image``'s versions that must not be pruned.

    Pinned by a setup, on a machine's disk now (flashing's record of disk
    contents), written or brought back by a queued or running deployment, the
    base of a network mount that is not over, or the boot image a machine
    boots over the network now.
    """
    disk_content = apps.get_model("flashing", "DiskContent")
    pinned = ImageFrozen.objects.filter(image=image).values_list("version_id", flat=True)
    on_disk = disk_content.objects.filter(
        Q(image=image) | Q(version__image=image), version__isnull=False
    ).values_list("version_id", flat=True)
    deploying = (
        _active_deployment_images()
        .filter(version__image=image)
        .values_list("version_id", flat=True)
    )
    mounted = network_mounts_live().filter(image=image).values_list("version_id", flat=True)
    return set(pinned) | set(on_disk) | set(deploying) | set(mounted) | _booted_now(image)


def _booted_now(image: Image) -> set[int]:
    """Ids of ``image``'s versions that a machine boots over the network now (boot images)."""
    if image.type != ImageType.BOOT:
        return set()
    from flashing.services.boot import boot_image_current  # flashing builds on the catalogue

    deployment_image = apps.get_model("flashing", "DeploymentImage")
    machines = (
        deployment_image.objects.filter(version__image=image, deployment__state="done")
        .values_list("deployment__machine_id", flat=True)
        .distinct()
    )
    booted = set()
    for machine_id in machines:
        current = boot_image_current(machine_id=machine_id)
        if current is not None and current[1].version_id is not None:
            booted.add(current[1].version_id)
    return booted


def network_mounts_live() -> QuerySet:
    """Flashing's network mounts that are not over (their image and version are in use)."""
    network_mount = apps.get_model("flashing", "NetworkMount")
    return network_mount.objects.filter(state__in=["starting", "ready", "ending"])
