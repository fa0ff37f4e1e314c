"""Resumable uploads (draft-ietf-httpbis-resumable-upload, interop version 8): an upload
resource that receives the bytes of the next version over several requests.

This module is the resource: creating and finding it, appending to it (one request at a
time), its offset for ``HEAD``, abandoning and expiring it. The bytes go one of two ways,
chosen when it is created:

* **decoded as they arrive** (:mod:`.decoded`): a declared Android sparse image (what
  ``baas image push`` sends) is decoded, mapped and written into the raw image its
  version will be, request after request, the decoder's state recorded with each
  acknowledged offset; the last request commits it as a plain upload's. Nothing is read
  or decoded twice, so a push resumed at half costs about half;
* **kept as sent** (:mod:`.sent`): everything else (zstd, gzip, raw, undeclared, and any
  upload whose digest is checked now) is kept verbatim and decoded behind the request
  that completes it. zstd's and gzip's decoder states live in C objects that cannot be
  saved, so those resume at any byte but decode again, at completion, what came before.

Either way the offset recorded in the row (:class:`~catalogue.models.ResumableUpload`,
what ``HEAD`` answers) is only ever one whose bytes are on the disk, synced, and it may be
any byte of the stream.

Concurrency: an append holds a PostgreSQL advisory lock on the upload for its whole
request (a second append, or the expiry, gets 409 / skips it); the lock goes with the
connection if the process dies. ``DELETE`` never waits: it removes the row, and an
append in progress notices at its next tick (the row is gone) and removes the file
itself. The expiry task also removes files whose row is gone (a process killed between
the two).

Bounds: ``BAAS_UPLOAD_RESUME_MAX`` unfinished uploads per user, the size limit of a
plain upload's body, and the owner's quota: an unfinished upload's bytes on disk count
in it (``catalogue.selectors.usage``) until it completes, expires
(``BAAS_UPLOAD_RESUME_HOURS`` after its last byte) or is abandoned.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts import rules as account_rules
from catalogue.exceptions import (
    TooManyUploads,
    UploadBusy,
    UploadCompleted,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLarge,
)
from catalogue.models import Image, ResumableUpload, UploadState, Version
from catalogue.services.lifecycle import quota_guard_for
from catalogue.services.uploads import decoded, sent
from catalogue.services.uploads.resumable_base import (
    INTEROP_VERSION,
    lifetime,
    max_size,
    part_of,
)
from catalogue.storage import get_storage

logger = logging.getLogger(__name__)

__all__ = ["INTEROP_VERSION", "max_size"]

# How long a finished upload's row is kept to say what became of it.
TOMBSTONE_DAYS = 7
# pg_try_advisory_lock(class, id): the class of these locks (any constant of our own).
LOCK_CLASS = 0x19B
# Held by an append once its file is cut to the acknowledged offset (see resumable_probe).
LIVE_CLASS = LOCK_CLASS + 1


# --- Creating and finding --------------------------------------------------------------


def resumable_create(
    *,
    actor: Any,
    image: Image,
    encoding: str | None,
    length: int | None,
    expected_sha256: str | None,
    want_digest: bool,
    note: str = "",
) -> ResumableUpload:
    """A new upload resource for ``image``'s next version. The caller checked the actor
    may write the image. Raises TooManyUploads, UploadTooLarge (size or quota)."""
    if length is not None and length > max_size():
        raise UploadTooLarge(
            f"The upload ({length} bytes) is larger than the {max_size()}-byte limit."
        )
    guard = quota_guard_for(image)
    if guard is not None:
        guard.check_length(length)
    with transaction.atomic():
        # One at a time per user, so that the count below holds.
        get_user_model().objects.select_for_update().filter(pk=actor.pk).first()
        open_tokens = list(
            ResumableUpload.objects.filter(owner=actor, state=UploadState.RECEIVING)
            .order_by("created_at")
            .values_list("token", flat=True)
        )
        if len(open_tokens) >= settings.BAAS_UPLOAD_RESUME_MAX:
            raise TooManyUploads(
                f"You have {len(open_tokens)} unfinished uploads, the most allowed: finish or "
                "abandon one (DELETE its URL) first, or wait until it expires.",
                tokens=open_tokens,
            )
        upload = ResumableUpload.objects.create(
            token=secrets.token_urlsafe(24),
            image=image,
            owner=actor,
            length=length,
            encoding=encoding or "",
            expected_sha256=expected_sha256 or "",
            want_digest=want_digest,
            note=note[:500],
            expires_at=timezone.now() + lifetime(),
            decoded={}
            if decoded.decodes_as_it_arrives(
                encoding=encoding,
                expected_sha256=expected_sha256,
                want_digest=want_digest,
                image=image,
            )
            else None,
        )
    # Its file, empty: nothing in it needs a sync (an append at offset 0 makes it again if a
    # crash lost it), and a sync here would wait for the journal, under load for long.
    part = part_of(upload)
    part.open(0)
    part.close()
    return upload


def resumable_get(*, actor: Any, token: str, finished: bool = True) -> ResumableUpload:
    """The actor's upload ``token``: receiving, or (``finished``) complete. Raises
    UploadNotFound, saying why for one that expired or failed."""
    upload = (
        ResumableUpload.objects.select_related("image", "version")
        .filter(token=token, owner_id=_person_id(actor))
        .first()
    )
    if upload is None:
        raise UploadNotFound()
    if upload.state == UploadState.EXPIRED:
        raise UploadNotFound(
            f"This upload expired at {upload.expires_at.isoformat()}: nothing was received "
            f"for {settings.BAAS_UPLOAD_RESUME_HOURS:g} hours (BAAS_UPLOAD_RESUME_HOURS), and "
            "its bytes were removed. Start a new upload.",
            state=upload.state,
            at=upload.expires_at.isoformat(),
        )
    if upload.state == UploadState.FAILED:
        raise UploadNotFound(
            f"This upload was complete but its image was refused: {upload.reason}",
            state=upload.state,
            at=upload.updated_at.isoformat(),
        )
    if upload.state == UploadState.COMPLETE and not finished:
        raise UploadCompleted(_completed_message(upload))
    return upload


def resumable_list(*, actor: Any, image_id: str | None = None) -> Any:
    """The actor's unfinished uploads, oldest first."""
    uploads = ResumableUpload.objects.filter(
        owner_id=_person_id(actor), state=UploadState.RECEIVING
    )
    if image_id:
        uploads = uploads.filter(image_id=image_id)
    return uploads.order_by("created_at")


def _person_id(actor: Any) -> int | None:
    """The user whose uploads ``actor`` sees: a person's own; an agent's, none."""
    if account_rules.is_agent(actor) or not getattr(actor, "is_authenticated", False):
        return None
    pk: int | None = getattr(actor, "pk", None)
    return pk


def _completed_message(upload: ResumableUpload) -> str:
    number = f"version {upload.version.number}" if upload.version else "a version since deleted"
    return f"This upload is complete: it became {number}. Nothing can be appended to it."


# --- Appending ------------------------------------------------------------------------


_local_locks: dict[tuple[int, int], threading.Lock] = {}


@contextlib.contextmanager
def _exclusive(upload: ResumableUpload, lock_class: int = LOCK_CLASS) -> Iterator[bool]:
    """Hold the upload's append lock while the block runs; yields whether it was had."""
    if connection.vendor != "postgresql":  # a test database without advisory locks
        lock = _local_locks.setdefault((lock_class, upload.pk), threading.Lock())
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()
        return
    key = (lock_class, upload.pk & 0x7FFFFFFF)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
        got = bool(cursor.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def _appending(upload: ResumableUpload) -> bool:
    """Whether an append of ``upload`` runs now, its file already cut to the acknowledged
    offset (so that every byte the file holds was received by it or acknowledged)."""
    if connection.vendor != "postgresql":
        lock = _local_locks.get((LIVE_CLASS, upload.pk))
        return lock is not None and lock.locked()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = %s::int::oid AND objid = %s::int::oid AND objsubid = 2)",
            (LIVE_CLASS, upload.pk & 0x7FFFFFFF),
        )
        return bool(cursor.fetchone()[0])


def resumable_append(
    *,
    actor: Any,
    token: str,
    offset: int,
    complete: bool,
    read: Callable[[int], bytes],
) -> tuple[ResumableUpload, Version | None]:
    """Append the bytes ``read`` returns (until b"") at ``offset``; if ``complete``, then
    commit the version. Returns the upload and the version (None unless complete).

    Every byte read before an error (the client cutting the connection included) is
    kept and acknowledged. Raises UploadNotFound, UploadBusy, UploadOffsetMismatch,
    UploadCompleted, UploadLengthMismatch, UploadTooLarge, and at completion whatever
    a plain upload raises (the upload then ends as ``failed``).
    """
    upload = resumable_get(actor=actor, token=token, finished=True)
    with _exclusive(upload) as got:
        if not got:
            raise UploadBusy(offset=upload.offset)
        # As the last append left it, now that it is over (or gone, or complete).
        upload = resumable_get(actor=actor, token=token, finished=False)
        if offset != upload.offset:
            raise UploadOffsetMismatch(expected=upload.offset, provided=offset)
        if upload.decoded is not None:
            with _exclusive(upload, LIVE_CLASS):  # HEAD may now ask for a checkpoint
                version = decoded.append_decoded(
                    actor=actor, upload=upload, read=read, complete=complete
                )
                return upload, version
        appender = sent.Appender.start(upload)
        try:
            with _exclusive(upload, LIVE_CLASS):  # HEAD may now sync and acknowledge the file
                if not complete:
                    sent.receive(appender, read)
                    return upload, None
                return upload, sent.complete(actor, upload, appender, read)
        finally:
            appender.part.close()


def resumable_probe(*, actor: Any, token: str) -> ResumableUpload:
    """The actor's upload ``token`` (as :func:`resumable_get`), with, while a request
    appends to it, every byte its file holds synced and acknowledged first: the offset a
    client may resume from is made durable when it is asked for, not at every checkpoint
    of the append (which only a crash of the machine needs)."""
    upload = resumable_get(actor=actor, token=token)
    if upload.state != UploadState.RECEIVING or not _appending(upload):
        return upload
    if upload.decoded is not None:
        return _ask_checkpoint(upload)
    held = part_of(upload).flush()
    if held is not None and held > upload.offset:
        ResumableUpload.objects.filter(
            pk=upload.pk, state=UploadState.RECEIVING, offset__lt=held
        ).update(offset=held)
        upload.refresh_from_db()
    return upload


def _ask_checkpoint(upload: ResumableUpload) -> ResumableUpload:
    """An upload decoded as it arrives: its offset is the stream offset of a checkpoint,
    which only its appender can take. Ask it for one and wait (a little) for the answer."""
    ResumableUpload.objects.filter(pk=upload.pk).update(probes_asked=F("probes_asked") + 1)
    upload.refresh_from_db()
    asked = upload.probes_asked
    deadline = time.monotonic() + decoded.PROBE_WAIT_SECONDS
    while upload.probes_answered < asked and time.monotonic() < deadline:
        time.sleep(0.01)
        upload.refresh_from_db()
        if upload.state != UploadState.RECEIVING or not _appending(upload):
            break
    return upload


# --- Abandoning and expiring ------------------------------------------------------------


def resumable_abandon(*, actor: Any, token: str) -> None:
    """Forget the upload and remove its bytes (an append in progress removes them at its
    next checkpoint). A finished one's tombstone goes too."""
    upload = ResumableUpload.objects.filter(token=token, owner_id=_person_id(actor)).first()
    if upload is None or upload.state == UploadState.EXPIRED:
        resumable_get(actor=actor, token=token)  # raises, saying why
        return
    with _exclusive(upload) as got:
        upload.delete()
        if got:
            part_of(upload).remove()


def resumable_expire(*, now: datetime | None = None) -> dict[str, int]:
    """Remove the bytes of uploads with nothing received for BAAS_UPLOAD_RESUME_HOURS
    (keeping a tombstone that says so), forget tombstones after TOMBSTONE_DAYS, and remove
    files left without a row. Run by beat; idempotent."""
    now = now or timezone.now()
    expired = 0
    for upload in ResumableUpload.objects.filter(
        state=UploadState.RECEIVING, expires_at__lt=now
    ).select_related("image"):
        with _exclusive(upload) as got:
            if not got:
                continue  # an append is running: it moves the expiry forward
            updated = ResumableUpload.objects.filter(
                pk=upload.pk, state=UploadState.RECEIVING, expires_at__lt=now
            ).update(state=UploadState.EXPIRED, stored=0, updated_at=now)
            if updated:
                part_of(upload).remove()
                expired += 1
                logger.info("Resumable upload %s to %s expired", upload.token, upload.image_id)
    forgotten, _ = (
        ResumableUpload.objects.exclude(state=UploadState.RECEIVING)
        .filter(updated_at__lt=now - timedelta(days=TOMBSTONE_DAYS))
        .delete()
    )
    live = set(
        ResumableUpload.objects.filter(state=UploadState.RECEIVING).values_list("token", flat=True)
    )
    orphans = get_storage().remove_resumable_parts(keep=live, older_than_seconds=60)
    return {"expired": expired, "forgotten": forgotten, "orphans": len(orphans)}
