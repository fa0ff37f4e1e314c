"""Storage used on disk, per image and per user, and what keeps images and versions alive.

Usage counts ``Version.stored_size``: the bytes allocated on disk for each
version's file (``st_blocks * 512``, recorded when the file is committed and
again when a compression job swaps it), so sparse holes cost nothing and a
compressed version counts as compressed. Files still being uploaded are not
counted. An image is charged to its owner, whoever uploaded its versions.

Versions may share blocks on the disk (``catalogue.services.sharing``: on XFS
with reflinks, a new version holds the unchanged blocks of the one before), so
``stored_size`` added up is the *logical* use, each version counted whole, as
if nothing were shared. What the disk actually holds is ``held``: the union of
the physical extents (FIEMAP) of the versions' files, each block counted once,
computed when asked (one ``ioctl`` per few hundred extents of each file). Where
the filesystem shares nothing, the two are equal. Quotas count the logical use.

What other apps hold (their deployments, disks, mounts) is asked through
``catalogue.holders``, which they fill: the catalogue imports none of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import BigIntegerField, Count, F, Func, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from accounts.models import User
from catalogue import holders
from catalogue.models import Image, ImageFrozen, ResumableUpload, UploadState, Version
from catalogue.storage import get_storage


@dataclass(frozen=True)
class UserUsage:
    used: int  # logical: every version's allocated bytes added up
    held: int  # on the disk: each block shared by several versions once
    quota: int | None
    images: list[Image]  # annotated with storage_used, version_count and storage_held


def images_with_usage(images: QuerySet[Image]) -> QuerySet[Image]:
    """``images`` annotated with ``storage_used`` (bytes on disk) and ``version_count``."""
    return images.annotate(
        storage_used=Coalesce(Sum("versions__stored_size"), 0),
        version_count=Count("versions"),
    )


def user_storage_used(*, user: User | int) -> int:
    """Bytes on disk taken by every version of every image ``user`` owns, and by the bytes
    of their images' unfinished resumable uploads."""
    owner_id = getattr(user, "pk", user)
    receiving = (
        ResumableUpload.objects.filter(image__owner_id=owner_id, state=UploadState.RECEIVING)
        .annotate(total=Func(F("stored"), function="SUM"))
        .values("total")
    )
    total = Version.objects.filter(image__owner_id=owner_id).aggregate(
        used=Coalesce(Sum("stored_size"), 0)
        + Coalesce(Subquery(receiving, output_field=BigIntegerField()), 0)
    )
    return int(total["used"])


def user_usage(*, user: User) -> UserUsage:
    """``user``'s storage: bytes used (logical and held), their quota (None: no limit), and
    each image's share.

    Three queries whatever the number of images. The caller has checked that
    the actor may see this user (``rules.can_manage_user``).
    """
    images = list(
        images_with_usage(Image.objects.filter(owner=user)).order_by("name", "created_at")
    )
    files = _version_files(Version.objects.filter(image__owner=user))
    storage = get_storage()
    for image in images:
        image.storage_held = storage.held_bytes(files.get(image.pk, []))  # type: ignore[attr-defined]
    held = storage.held_bytes(file for group in files.values() for file in group)
    return UserUsage(
        used=user_storage_used(user=user), held=held, quota=user.storage_quota, images=images
    )


def image_storage(*, image: Image, versions: Iterable[Version] | None = None) -> tuple[int, int]:
    """``(logical, held)``: the bytes ``image``'s versions take counted one by one, and
    those the disk holds for them, shared blocks once. ``versions``: its versions, when
    the caller has them already (no query then)."""
    rows = list(Version.objects.filter(image=image) if versions is None else versions)
    files = [(image.pk, v.number, v.stored_compression) for v in rows]
    return sum(v.stored_size for v in rows), get_storage().held_bytes(files)


def _version_files(versions: QuerySet[Version]) -> dict[uuid.UUID, list[tuple]]:
    """The versions' files, ``(image, number, compression)``, by image."""
    files: dict[uuid.UUID, list[tuple]] = {}
    rows = versions.values_list("image_id", "number", "stored_compression")
    for image_id, number, compression in rows:
        files.setdefault(image_id, []).append((image_id, number, compression))
    return files


# --- What is in use ---------------------------------------------------------------------


def image_in_active_deployment(*, image_uuid: uuid.UUID) -> bool:
    """Whether work in progress in an app built on the catalogue needs this image
    (flashing: a queued or running deployment writes it or brings it back)."""
    return holders.image_busy(image_uuid=image_uuid)


def versions_kept_of(*, image: Image) -> set[int]:
    """Ids of ``image``'s versions that must not be pruned.

    Pinned by a setup, or held by an app built on the catalogue
    (``catalogue.holders``; flashing: on a machine's disk, written or brought
    back by a queued or running deployment, the base of a live network mount,
    the boot image a machine boots over the network now).
    """
    pinned = ImageFrozen.objects.filter(image=image).values_list("version_id", flat=True)
    return set(pinned) | holders.versions_held(image=image)
