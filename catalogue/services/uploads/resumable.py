"""Resumable uploads (draft-ietf-httpbis-resumable-upload, interop version 8): an upload
resource that receives the bytes of the next version over several requests.

Design: **store the bytes as sent; decode them behind the request that completes.** Each
append writes the request body verbatim to the upload's ``.part`` file (``ResumablePart``,
blocks of zeros left as holes); the offset recorded in the row
(:class:`~catalogue.models.ResumableUpload`) is only ever one whose bytes were synced
first, and it can be *any* byte, whatever the encoding. The request that completes the
upload runs the very pipeline a single-request upload runs (:class:`VersionReceiver`:
decoding, holes, map, checks, hashing, then :func:`version_upload`'s atomic commit), fed
by a :class:`~catalogue.services.uploads.follow.Follower` thread that reads the file
behind the appends: what earlier requests left there, then this request's bytes as they
land. A resumed version is thus committed exactly as a plain one, and the whole-image
SHA-256 of a large one is left to the background digest step as today.

When the bytes become durable (measured with ``bench/catalogue.py --only cli``: a 600 MiB
Android sparse push of the 6 GiB bench disk, and a service-level cProfile of one
completing append). The first version synced the file and recorded the offset every
16 MiB or second: a 600 MiB push spent ~40 fsyncs, 40 UPDATEs and, above all, wrote its
600 MiB twice to the disk (the copy as sent, then the version), with the socket idle
during each sync; it took 2.3-3.3 times as long as a plain upload. Now:

* a **checkpoint** (fdatasync, then the offset recorded) comes every CHECKPOINT_BYTES or
  CHECKPOINT_SECONDS, every TICK_SECONDS on a link slower than SLOW_RATE (where a sync
  costs little), and when a request ends other than by completing (a cut, an error, an
  ``Upload-Complete: ?0`` append): what a crash of the machine may lose is bounded by
  those (about a second of transfer on a slow link, ten on a fast one), and a cut loses
  nothing;
* the offset a client reads (``HEAD``/``GET``, :func:`resumable_probe`) is made durable
  when it is asked for: while an append runs, the asking request syncs the file's bytes
  itself and records them (a file is only probed once its appender has cut it to the
  acknowledged offset and says so by a second advisory lock, so bytes left by a crashed
  request are never acknowledged);
* between checkpoints, a cheap UPDATE every TICK_SECONDS records the bytes the file takes
  (the quota counts them) and notices an abandoned upload;
* an upload that completes removes its file before the kernel has written most of it:
  the copy as sent of an uninterrupted push mostly never reaches the disk.

Why not decode while the bytes stream and acknowledge offsets at clean decoder points
(a sparse chunk boundary, a zstd frame end), without a copy as sent? That would need the
decoder, hashing and mapping stages (threads of one :class:`catalogue.stages.Stages`
group, with zlib's and zstd's state inside C objects that cannot be saved) to checkpoint
and restore their state, and would make gzip (one deflate stream, no restart points)
restart from 0 and zstd resume only at frame ends (a single-frame ``zstd`` file: never).
Storing as sent resumes all four encodings at any byte and keeps the one version
pipeline untouched. Its cost: a copy into the page cache of every byte, and the bytes
received before a cut are decoded again from a local file (a compressed or sparse
upload's is small; a raw one's zeros are holes), though now while the rest arrives.

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts import rules as account_rules
from baas_site.exceptions import DomainError
from catalogue.exceptions import (
    TooManyUploads,
    UploadBusy,
    UploadCompleted,
    UploadLengthMismatch,
    UploadNotFound,
    UploadOffsetMismatch,
    UploadTooLarge,
)
from catalogue.models import Image, ImageType, ResumableUpload, UploadState, Version
from catalogue.services.lifecycle import quota_guard_for
from catalogue.services.uploads.commit import version_upload
from catalogue.services.uploads.follow import Follower
from catalogue.services.uploads.receiver import VersionReceiver
from catalogue.storage import ResumablePart, get_storage
from diskimage import CHUNK

logger = logging.getLogger(__name__)

INTEROP_VERSION = 8
# An append syncs and acknowledges what it received every this many bytes or seconds (and
# when the request ends, and whenever HEAD or GET asks): what a crash of the machine loses.
CHECKPOINT_BYTES = 1 << 30
CHECKPOINT_SECONDS = 10.0
# Every this many seconds an append records the bytes it takes (the quota) and notices an
# abandoned upload: a cheap UPDATE. If fewer than TICK_SECONDS * SLOW_RATE bytes arrived
# since the last tick, it syncs and acknowledges them too (a checkpoint): on a link that
# slow a sync costs little, so a crash loses at most about a second of transfer there.
TICK_SECONDS = 1.0
SLOW_RATE = 64 << 20
# Room for compression that does not compress, as for a plain upload's body.
ENVELOPE = 1 << 20
# How long a finished upload's row is kept to say what became of it.
TOMBSTONE_DAYS = 7
# pg_try_advisory_lock(class, id): the class of these locks (any constant of our own).
LOCK_CLASS = 0x19B
# Held by an append once its file is cut to the acknowledged offset (see resumable_probe).
LIVE_CLASS = LOCK_CLASS + 1


def max_size() -> int:
    """The most bytes as sent an upload may have (Upload-Limit's max-size)."""
    limit: int = settings.BAAS_MAX_IMAGE_SIZE
    return limit + limit // 128 + ENVELOPE


def lifetime() -> timedelta:
    return timedelta(hours=settings.BAAS_UPLOAD_RESUME_HOURS)


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
        )
    part = _part(upload)
    part.open(0)
    part.sync()
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


def _part(upload: ResumableUpload) -> ResumablePart:
    return get_storage().resumable_part(upload.image_id, upload.token)


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


@dataclass
class _Appender:
    upload: ResumableUpload
    part: ResumablePart
    room: int | None  # bytes on disk the owner's quota leaves this upload; None: no quota
    acknowledged: int
    last_sync: float = 0.0
    last_tick: float = 0.0
    ticked_at: int = 0  # the file's position at the last tick or checkpoint

    def checkpoint(self) -> None:
        """Sync what arrived, then acknowledge it; UploadNotFound if it was abandoned."""
        stored = self.part.sync()
        position = self.part.position
        # Greatest: a HEAD may have acknowledged more meanwhile (resumable_probe).
        self._record(offset=Greatest(F("offset"), Value(position)), stored=stored)
        self.upload.offset = self.acknowledged = position
        self.upload.stored = stored
        self.last_sync = self.last_tick = time.monotonic()
        self.ticked_at = position

    def appended(self) -> None:
        """After each piece: a checkpoint, or a tick, when one is due."""
        now, position = time.monotonic(), self.part.position
        due = now - self.last_sync >= CHECKPOINT_SECONDS
        if position - self.acknowledged >= CHECKPOINT_BYTES or due:
            self.checkpoint()
        elif now - self.last_tick >= TICK_SECONDS:
            if position - self.ticked_at <= (now - self.last_tick) * SLOW_RATE:
                self.checkpoint()  # a slow link: the sync is cheap
            else:
                self.tick()

    def tick(self) -> None:
        """Record the bytes the file takes and move the expiry on, without a sync."""
        self.upload.stored = stored = self.part.allocated()
        self._record(stored=stored)
        self.last_tick, self.ticked_at = time.monotonic(), self.part.position

    def _record(self, **fields: Any) -> None:
        updated = ResumableUpload.objects.filter(
            pk=self.upload.pk, state=UploadState.RECEIVING
        ).update(**fields, expires_at=timezone.now() + lifetime(), updated_at=timezone.now())
        if not updated:  # DELETEd meanwhile: its bytes go too
            self.part.remove()
            raise UploadNotFound("This upload was abandoned while this request appended to it.")

    def check_quota(self) -> None:
        if self.room is not None and self.part.path.stat().st_blocks * 512 > self.room:
            raise UploadTooLarge(
                f"Storage quota exceeded: this upload now takes more than the {max(self.room, 0)} "
                "bytes the owner's quota leaves. What arrived before is kept; free space and "
                "resume, or abandon the upload."
            )


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
        appender = _start(upload)
        try:
            with _exclusive(upload, LIVE_CLASS):  # HEAD may now sync and acknowledge the file
                if not complete:
                    _receive(appender, read)
                    return upload, None
                return upload, _complete(actor, upload, appender, read)
        finally:
            appender.part.close()


def _start(upload: ResumableUpload) -> _Appender:
    guard = quota_guard_for(upload.image)
    room = None if guard is None else guard.room + upload.stored  # its own bytes are in `used`
    part = _part(upload)
    part.open(upload.offset)
    now = time.monotonic()
    return _Appender(
        upload=upload,
        part=part,
        room=room,
        acknowledged=upload.offset,
        last_sync=now,
        last_tick=now,
        ticked_at=upload.offset,
    )


def resumable_probe(*, actor: Any, token: str) -> ResumableUpload:
    """The actor's upload ``token`` (as :func:`resumable_get`), with, while a request
    appends to it, every byte its file holds synced and acknowledged first: the offset a
    client may resume from is made durable when it is asked for, not at every checkpoint
    of the append (which only a crash of the machine needs)."""
    upload = resumable_get(actor=actor, token=token)
    if upload.state != UploadState.RECEIVING or not _appending(upload):
        return upload
    held = _part(upload).flush()
    if held is not None and held > upload.offset:
        ResumableUpload.objects.filter(
            pk=upload.pk, state=UploadState.RECEIVING, offset__lt=held
        ).update(offset=held)
        upload.refresh_from_db()
    return upload


class _Refused(Exception):
    """The image itself was refused while the last request streamed (not the append)."""

    def __init__(self, error: DomainError):
        super().__init__(str(error))
        self.error = error


def _receive(
    appender: _Appender,
    read: Callable[[int], bytes],
    tee: Callable[[int, bytes], None] | None = None,
) -> None:
    """Append what ``read`` gives to the upload's file (telling ``tee`` how far the file
    goes after each piece), syncing and acknowledging it at checkpoints, and at the end
    when it ends with an error (a cut included) or has no ``tee`` (with one, the caller
    commits or checkpoints)."""
    upload, part = appender.upload, appender.part
    limit = max_size() if upload.length is None else min(upload.length, max_size())
    try:
        while data := read(CHUNK):
            if part.position + len(data) > limit:
                keep = limit - part.position
                part.append(data[:keep])
                if upload.length is not None and limit == upload.length:
                    raise UploadLengthMismatch(
                        f"More bytes than the {upload.length} announced (Upload-Length) were "
                        f"sent; the first {upload.length} are kept."
                    )
                raise UploadTooLarge(
                    f"The upload is larger than the {limit}-byte limit; the first {limit} "
                    "bytes are kept."
                )
            part.append(data)
            appender.check_quota()
            if tee is not None:
                try:
                    tee(part.position, data)
                except DomainError as exc:
                    raise _Refused(exc) from exc
            appender.appended()
    except BaseException:
        if part.position != appender.acknowledged:
            with contextlib.suppress(Exception):  # keep what arrived; the error says the rest
                appender.checkpoint()
        raise
    if tee is None:
        appender.checkpoint()


def _complete(
    actor: Any, upload: ResumableUpload, appender: _Appender, read: Callable[[int], bytes]
) -> Version:
    """The last request: what was received before is fed from the file to a receiver (the
    one a plain upload has), then this request's bytes as they arrive — appended to the file
    too, so that a cut leaves the upload resumable —, then the version is committed as a
    plain upload's is. The bytes as sent are removed once it is."""
    image = Image.objects.get(pk=upload.image_id)
    digest_now = (
        bool(upload.expected_sha256)
        or upload.want_digest
        or account_rules.is_agent(actor)
        or image.type == ImageType.BOOT
    )
    receiver = VersionReceiver(
        image=image,
        max_size=settings.BAAS_MAX_IMAGE_SIZE,
        digest=digest_now,
        wire_digest=bool(upload.expected_sha256),
        raw_at_least=max(0, max(upload.offset, upload.length or 0) - ENVELOPE) * 99 // 100,
    )
    part = appender.part
    # Its bytes count once: as the version the receiver writes, not also as the upload's.
    ResumableUpload.objects.filter(pk=upload.pk).update(stored=0)
    try:
        with receiver:
            receiver.declare_encoding(upload.encoding or None)
            # The file holds exactly what was acknowledged; a follower feeds it to the
            # receiver behind this request's appends (.follow).
            with part.reader() as source:
                follower = Follower(source, receiver.write, name=f"upload-{upload.pk}")
                try:
                    try:
                        follower.advance(part.position)
                    except DomainError as exc:
                        raise _Refused(exc) from exc
                    started = time.monotonic()
                    _receive(appender, read, tee=follower.advance)
                    received = time.monotonic()
                    try:
                        follower.finish(part.position)
                    except DomainError as exc:
                        raise _Refused(exc) from exc
                    finished = time.monotonic()
                finally:
                    follower.stop()
            if upload.length is not None and part.position != upload.length:
                raise UploadLengthMismatch(
                    f"The upload was announced as {upload.length} bytes (Upload-Length) but "
                    f"ends at {part.position}."
                )
            ResumableUpload.objects.filter(pk=upload.pk).update(stored=0)  # as above
            try:
                version = version_upload(
                    actor=actor,
                    image=image,
                    receiver=receiver,
                    expected_sha256=upload.expected_sha256 or None,
                    note=upload.note,
                )
            except DomainError as exc:
                raise _Refused(exc) from exc
            committed = time.monotonic()
    except _Refused as refused:
        part.remove()
        ResumableUpload.objects.filter(pk=upload.pk).update(
            state=UploadState.FAILED,
            reason=str(refused.error)[:500],
            stored=0,
            updated_at=timezone.now(),
        )
        raise refused.error from None
    except BaseException:  # cut, or a length or size refused: it stays resumable
        with contextlib.suppress(Exception):  # (a cut was acknowledged by _receive already)
            if part.position != appender.acknowledged:
                appender.checkpoint()
        with contextlib.suppress(OSError):
            stored = part.path.stat().st_blocks * 512
            ResumableUpload.objects.filter(pk=upload.pk, state=UploadState.RECEIVING).update(
                stored=stored
            )
        raise
    # The version is durable (version_upload synced it): the bytes as sent, never synced
    # since the last checkpoint, go unwritten if the kernel has not written them yet.
    part.remove()
    logger.debug(
        "Resumable upload %s: %d bytes received in %.2f s; decoded %.2f s later, committed "
        "after %.2f s more; the copy as sent removed in %.2f s",
        upload.token,
        part.position - upload.offset,
        received - started,
        finished - received,
        committed - finished,
        time.monotonic() - committed,
    )
    ResumableUpload.objects.filter(pk=upload.pk).update(
        state=UploadState.COMPLETE,
        version=version,
        offset=part.position,
        stored=0,
        updated_at=timezone.now(),
    )
    upload.refresh_from_db()
    return version


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
            _part(upload).remove()


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
                _part(upload).remove()
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
