"""What both ways of receiving a resumable upload share: limits, the row's updates, its file.

A resumable upload (:mod:`.resumable`) receives its bytes either kept as sent
(:mod:`.sent`) or decoded as they arrive (:mod:`.decoded`); both record what they hold
in the row the same way, under the same limits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from baas_site.exceptions import DomainError
from catalogue.exceptions import UploadLengthMismatch, UploadNotFound, UploadTooLarge
from catalogue.models import ResumableUpload, UploadState
from catalogue.storage import ResumablePart, get_storage

INTEROP_VERSION = 8
# An append syncs and acknowledges what it received every this many bytes or seconds (and
# when the request ends, and whenever HEAD or GET asks): what a crash of the machine loses.
CHECKPOINT_BYTES = 1 << 30
CHECKPOINT_SECONDS = 10.0
# Every this many seconds an append records the bytes it takes (the quota) and notices an
# abandoned upload: a cheap UPDATE (an upload decoded as it arrives looks for abandonment
# more often and records only every decoded.RECORD_SECONDS on a fast link). If fewer than
# TICK_SECONDS * SLOW_RATE bytes arrived since the last tick, it syncs and acknowledges
# them too (a checkpoint): on a link that slow a sync costs little, so a crash loses at
# most about a second of transfer there.
TICK_SECONDS = 1.0
SLOW_RATE = 64 << 20
# Room for compression that does not compress, as for a plain upload's body.
ENVELOPE = 1 << 20


def max_size() -> int:
    """The most bytes as sent an upload may have (Upload-Limit's max-size)."""
    limit: int = settings.BAAS_MAX_IMAGE_SIZE
    return limit + limit // 128 + ENVELOPE


def lifetime() -> timedelta:
    return timedelta(hours=settings.BAAS_UPLOAD_RESUME_HOURS)


def stream_limit(upload: ResumableUpload) -> int:
    """Where the bytes as sent must end: the announced length, or the size limit."""
    return max_size() if upload.length is None else min(upload.length, max_size())


def too_long(upload: ResumableUpload, limit: int) -> DomainError:
    """The refusal of bytes past ``limit`` (whose first ``limit`` are kept)."""
    if upload.length is not None and limit == upload.length:
        return UploadLengthMismatch(
            f"More bytes than the {upload.length} announced (Upload-Length) were "
            f"sent; the first {upload.length} are kept."
        )
    return UploadTooLarge(
        f"The upload is larger than the {limit}-byte limit; the first {limit} bytes are kept."
    )


def part_of(upload: ResumableUpload) -> ResumablePart:
    return get_storage().resumable_part(upload.image_id, upload.token)


def record(upload: ResumableUpload, **fields: Any) -> None:
    """Update the receiving row (the expiry moves on); UploadNotFound if it was abandoned
    meanwhile (DELETE), the caller then removes its bytes."""
    now = timezone.now()
    updated = ResumableUpload.objects.filter(pk=upload.pk, state=UploadState.RECEIVING).update(
        **fields, expires_at=now + lifetime(), updated_at=now
    )
    if not updated:
        raise UploadNotFound("This upload was abandoned while this request appended to it.")


def fail(upload: ResumableUpload, error: DomainError) -> None:
    """The image was refused at completion (or, decoded as it arrives, on the way)."""
    ResumableUpload.objects.filter(pk=upload.pk).update(
        state=UploadState.FAILED, reason=str(error)[:500], stored=0, updated_at=timezone.now()
    )


class Refused(Exception):
    """The image itself was refused while the bytes streamed (not the append)."""

    def __init__(self, error: DomainError):
        super().__init__(str(error))
        self.error = error
