"""What each image's lifecycle means: temporal expiry, version retention, storage quotas.

**User data images** are always synced back: new pins through
``setups.effective_sync``, pins made before an image became user data through
:func:`user_data_pins_sync`.

**Temporal images** carry ``expires_at``: BAAS_TEMPORAL_DEFAULT_DAYS after they
become temporal (at creation, or when their type changes), at most
BAAS_TEMPORAL_MAX_DAYS from now when an owner extends them
(:func:`image_extend`). The beat job :func:`temporal_expire` deletes expired
ones with their files (after the commit) unless a queued or running
deployment writes or brings back the image; that one waits for a later tick.
A setup that pins an expired temporal image does **not** keep it alive —
otherwise pinning would be a way around the retention period: expiry takes
the image out of such setups, recording a ``setup.image_remove`` audit event
(reason ``expired``) for each, then deletes it. Owners see ``expires_at`` in
the API and extend it in time.

**Retention** keeps the latest ``keep_versions`` versions of an image (None:
all). :func:`versions_prune` runs after each upload commits and from beat; it
never deletes a version pinned by a setup, on a machine's disk, or in a
queued or running deployment (``selectors.usage.versions_kept_of``), and
never the latest. Version 0, the empty base, is a version like any other.

**Quotas** (``User.storage_quota``, bytes on disk; None: no limit) are checked
by :class:`QuotaGuard` while an upload streams: up front from its length, then
from the bytes the pending file takes on disk. The owner of the image is
charged, whoever uploads. Concurrent uploads of one owner are each checked
against the usage at their start, so together they may pass the quota by at
most their own sizes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_record
from baas_site.tasks import TransactionAwareTask
from catalogue import rules
from catalogue.exceptions import ImageConflict, InvalidInput, NotYours, UploadTooLarge
from catalogue.models import Compression, Image, ImageFrozen, ImageType, Version
from catalogue.selectors.usage import (
    image_in_active_deployment,
    user_storage_used,
    versions_kept_of,
)
from catalogue.services.bootfiles import boot_cache_forget
from catalogue.services.renditions import rendition_delete
from catalogue.storage import get_storage

logger = logging.getLogger(__name__)

GiB = 1024**3


# --- User data images -------------------------------------------------------------------------


def user_data_pins_sync(image: Image) -> int:
    """An image that became user data is synced back from every setup that pins it.

    ``setups.effective_sync`` turns sync on for new pins; this turns it on for
    pins made before the type changed, wherever the setup's owner may write
    the image (the others could never bring it back). Returns how many changed.
    """
    if image.type != ImageType.USER_DATA:
        return 0
    frozen = ImageFrozen.objects.filter(image=image, sync=False).select_related("setup__owner")
    ids = [item.pk for item in frozen if rules.can_write_image(item.setup.owner, image)]
    return ImageFrozen.objects.filter(pk__in=ids).update(sync=True)


# --- Temporal images ------------------------------------------------------------------------


def temporal_max_expiry(now: datetime | None = None) -> datetime:
    """The latest a temporal image may be kept until, asked ``now``."""
    return (now or timezone.now()) + timedelta(days=settings.BAAS_TEMPORAL_MAX_DAYS)


def image_expiry_apply(image: Image, *, old_type: str | None = None) -> None:
    """Give ``image`` the expiry its type calls for; call before saving it.

    An image that becomes temporal expires BAAS_TEMPORAL_DEFAULT_DAYS from
    now; one that stops being temporal no longer expires.
    """
    if image.type != ImageType.TEMPORAL:
        image.expires_at = None
    elif old_type != ImageType.TEMPORAL or image.expires_at is None:
        days = min(settings.BAAS_TEMPORAL_DEFAULT_DAYS, settings.BAAS_TEMPORAL_MAX_DAYS)
        image.expires_at = timezone.now() + timedelta(days=days)


def image_extend(*, actor: Any, image: Image, days: int) -> Image:
    """Keep the temporal ``image`` ``days`` days longer, up to BAAS_TEMPORAL_MAX_DAYS from now.

    Extends from its current expiry (or from now, if that has passed).
    Whoever may write the image may extend it. Raises NotYours or
    InvalidInput (not temporal, or beyond the maximum).
    """
    if not rules.can_write_image(actor, image):
        raise NotYours("You may read this image but not extend it.")
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image.type != ImageType.TEMPORAL:
            raise ImageConflict("Only temporal images expire; this one is kept until deleted.")
        now = timezone.now()
        new = max(image.expires_at or now, now) + timedelta(days=days)
        limit = temporal_max_expiry(now)
        if new > limit:
            room = max((limit - max(image.expires_at or now, now)).days, 0)
            raise InvalidInput(
                {
                    "days": f"A temporal image is kept at most {settings.BAAS_TEMPORAL_MAX_DAYS} "
                    f"days from now (until {limit:%Y-%m-%d %H:%M} UTC): extend it by at most "
                    f"{room} day(s)."
                }
            )
        old = image.expires_at
        image.expires_at = new
        image.save(update_fields=["expires_at", "updated_at"])
        audit_record(
            actor=actor,
            action="image.extend",
            target=image,
            old=old.isoformat() if old else None,
            new=new.isoformat(),
        )
    return image


@dataclass
class ExpiryReport:
    """What one run of :func:`temporal_expire` did, by image UUID."""

    deleted: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    unpinned: dict[str, list[str]] = field(default_factory=dict)  # image → setup UUIDs


def temporal_expire(*, now: datetime | None = None) -> ExpiryReport:
    """Delete every temporal image past its expiry, unless a deployment still needs it.

    Idempotent; each image in a transaction of its own, so one that waits or
    fails does not hold back the others. Files go after each commit.
    """
    now = now or timezone.now()
    report = ExpiryReport()
    expired = Image.objects.filter(type=ImageType.TEMPORAL, expires_at__lte=now)
    for image_uuid in expired.values_list("pk", flat=True):
        try:
            _expire_one(image_uuid, now, report)
        except ProtectedError:  # a row came to depend on it meanwhile: next tick
            logger.warning(
                "Expired temporal image %s is still referenced; retrying later", image_uuid
            )
            report.waiting.append(str(image_uuid))
    return report


@transaction.atomic
def _expire_one(image_uuid: uuid.UUID, now: datetime, report: ExpiryReport) -> None:
    image = (
        Image.objects.select_for_update()
        .filter(pk=image_uuid, type=ImageType.TEMPORAL, expires_at__lte=now)
        .first()
    )
    if image is None:  # extended, retyped or deleted meanwhile
        return
    if image_in_active_deployment(image_uuid=image.pk):
        report.waiting.append(str(image.pk))
        return
    unpinned = _unpin_everywhere(image)
    if unpinned:
        report.unpinned[str(image.pk)] = unpinned
    audit_record(
        actor=None,
        action="image.expire",
        target=image,
        name=image.name,
        owner=image.owner_id,
        expires_at=image.expires_at.isoformat() if image.expires_at else None,
    )
    image.delete()
    transaction.on_commit(partial(get_storage().delete_image, image_uuid))
    report.deleted.append(str(image_uuid))


def _unpin_everywhere(image: Image) -> list[str]:
    """Take ``image`` out of every setup that pins it, recording each removal."""
    frozen = list(ImageFrozen.objects.filter(image=image).select_related("setup", "version"))
    for item in frozen:
        audit_record(
            actor=None,
            action="setup.image_remove",
            target=item.setup,
            image=str(image.pk),
            version=item.version.number,
            reason="expired",
        )
    ImageFrozen.objects.filter(pk__in=[item.pk for item in frozen]).delete()
    return [str(item.setup_id) for item in frozen]


# --- Retention --------------------------------------------------------------------------------


def versions_prune(*, image_uuid: uuid.UUID | str) -> list[int]:
    """Delete the versions of the image beyond its latest ``keep_versions``; return their numbers.

    Kept whatever their age: versions pinned by a setup, on a machine's disk,
    or in a queued or running deployment. Files go after the commit (every
    suffix: a compression job may be swapping one in). Idempotent; a version
    pinned while this runs makes it delete nothing, until the next run.
    """
    try:
        return _prune(image_uuid)
    except ProtectedError:
        logger.info("A version of %s was pinned while pruning; next run", image_uuid)
        return []


@transaction.atomic
def _prune(image_uuid: uuid.UUID | str) -> list[int]:
    image = Image.objects.select_for_update().filter(pk=image_uuid).first()
    if image is None or image.keep_versions is None:
        return []
    newest_first = list(image.versions.order_by("-number").only("pk", "number", "sha256"))
    kept = versions_kept_of(image=image)
    doomed = [v for v in newest_first[image.keep_versions :] if v.pk not in kept]
    if not doomed:
        return []
    numbers = sorted(v.number for v in doomed)
    Version.objects.filter(pk__in=[v.pk for v in doomed]).delete()
    audit_record(
        actor=None,
        action="version.prune",
        target=image,
        numbers=numbers,
        keep_versions=image.keep_versions,
    )
    transaction.on_commit(partial(_delete_files, image.pk, numbers))
    if image.type == ImageType.BOOT:  # their kernels and initrds, extracted for network boot
        sha256s = [v.sha256 for v in doomed]
        transaction.on_commit(partial(boot_cache_forget, image_uuid=image.pk, sha256s=sha256s))
    return numbers


def _delete_files(image_uuid: uuid.UUID, numbers: list[int]) -> None:
    storage = get_storage()
    for number in numbers:
        for compression in Compression.values:
            storage.delete_version(image_uuid, number, compression)
        storage.delete_map(image_uuid, number)
        rendition_delete(image_uuid, number)


def versions_prune_all() -> dict[str, list[int]]:
    """Prune every image that limits its versions; returns the numbers deleted per image."""
    pruned = {}
    limited = Image.objects.filter(keep_versions__isnull=False).values_list("pk", flat=True)
    for image_uuid in limited:
        if numbers := versions_prune(image_uuid=image_uuid):
            pruned[str(image_uuid)] = numbers
    return pruned


def versions_prune_schedule(image: Image) -> None:
    """Call after a version is stored or ``keep_versions`` changed: prune after the commit."""
    if image.keep_versions is None:
        return
    versions_prune_task.delay(str(image.pk))  # (after the commit: TransactionAwareTask)


@shared_task(name="catalogue.versions_prune", base=TransactionAwareTask, max_retries=3)
def versions_prune_task(image_uuid: str | None = None) -> dict:
    """Delete versions beyond an image's ``keep_versions`` (every image when none is given).

    Sent after each upload commits (beside the rules it applies, which send it), and by
    beat every BAAS_VERSIONS_PRUNE_INTERVAL seconds for every image; idempotent.
    """
    if image_uuid is None:
        return versions_prune_all()
    numbers = versions_prune(image_uuid=image_uuid)
    return {image_uuid: numbers} if numbers else {}


# --- Quotas -----------------------------------------------------------------------------------


def _gib(value: int) -> str:
    return f"{value / GiB:.2f}"


class QuotaGuard:
    """The room one upload has under its image owner's quota, checked as the bytes arrive."""

    def __init__(self, *, owner: User, quota: int, used: int):
        self.owner = owner
        self.quota = quota
        self.used = used

    @property
    def room(self) -> int:
        return self.quota - self.used

    def _refuse(self, more: int) -> UploadTooLarge:
        return UploadTooLarge(
            f"Storage quota of {_gib(self.quota)} GiB exceeded: {_gib(self.used)} GiB used by "
            f"{self.owner.username}'s images, and this upload needs {_gib(more)} GiB "
            f"({more} bytes) where {max(self.room, 0)} bytes are left. Nothing was stored. "
            "Delete versions (or set keep_versions), send the image compressed, or ask an "
            "administrator for a larger quota."
        )

    def check_length(self, length: int | None) -> None:
        """Up front: refuse a body longer than the room left, and any body once none is left."""
        if self.room <= 0 or (length is not None and length > self.room):
            raise self._refuse(length or 0)

    def check_stored(self, allocated: int) -> None:
        """Midway: refuse once the pending file takes more bytes on disk (``allocated``)
        than the room left."""
        if allocated > self.room:
            raise self._refuse(allocated)


def quota_guard_for(image: Image) -> QuotaGuard | None:
    """The quota guard for an upload to ``image``, or None when its owner has no quota."""
    owner = User.objects.only("pk", "username", "storage_quota").get(pk=image.owner_id)
    if owner.storage_quota is None:
        return None
    return QuotaGuard(owner=owner, quota=owner.storage_quota, used=user_storage_used(user=owner))
