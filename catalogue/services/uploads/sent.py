"""A resumable upload kept as sent: each request's bytes appended verbatim to its ``.part``,
decoded behind the request that completes it.

For what cannot be decoded over several requests (zstd and gzip: their decoders' state
lives in C objects that cannot be saved) and what is hashed as sent (an expected digest,
which may be of the bytes as sent). Each append writes the request body verbatim to the
upload's ``.part`` file (``ResumablePart``, blocks of zeros left as holes); the offset
recorded in the row is only ever one whose bytes were synced first, and it can be *any*
byte, whatever the encoding. The request that completes the upload runs the very
pipeline a single-request upload runs (:class:`VersionReceiver`), fed by a
:class:`~catalogue.services.uploads.follow.Follower` thread that reads the file behind the
appends: what earlier requests left there, then this request's bytes as they land. So a
resumed zstd or gzip upload restarts nothing, but decodes again, at completion, every
byte received before (from the page cache or the disk).

When the bytes become durable:

* a **checkpoint** (fdatasync, then the offset recorded) comes every CHECKPOINT_BYTES or
  CHECKPOINT_SECONDS, every TICK_SECONDS on a link slower than SLOW_RATE (where a sync
  costs little), and when a request ends other than by completing (a cut, an error, an
  ``Upload-Complete: ?0`` append);
* the offset a client reads (``HEAD``/``GET``, ``resumable_probe``) is made durable
  when it is asked for: while an append runs, the asking request syncs the file's bytes
  itself and records them (a file is only probed once its appender has cut it to the
  acknowledged offset and says so by a second advisory lock, so bytes left by a crashed
  request are never acknowledged);
* between checkpoints, a cheap UPDATE every TICK_SECONDS records the bytes the file takes
  (the quota counts them) and notices an abandoned upload;
* an upload that completes removes its file before the kernel has written most of it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts import rules as account_rules
from baas_site.exceptions import DomainError
from catalogue.exceptions import UploadLengthMismatch, UploadNotFound, UploadTooLarge
from catalogue.models import Image, ImageType, ResumableUpload, UploadState, Version
from catalogue.services.lifecycle import quota_guard_for
from catalogue.services.uploads import resumable_base as base
from catalogue.services.uploads.commit import version_upload
from catalogue.services.uploads.follow import Follower
from catalogue.services.uploads.receiver import VersionReceiver
from catalogue.storage import ResumablePart
from diskimage import CHUNK

logger = logging.getLogger(__name__)


@dataclass
class Appender:
    upload: ResumableUpload
    part: ResumablePart
    room: int | None  # bytes on disk the owner's quota leaves this upload; None: no quota
    acknowledged: int
    last_sync: float = 0.0
    last_tick: float = 0.0
    ticked_at: int = 0  # the file's position at the last tick or checkpoint

    @classmethod
    def start(cls, upload: ResumableUpload) -> Appender:
        """Open the upload's file at its acknowledged offset (what lies past it is cut)."""
        guard = quota_guard_for(upload.image)
        room = None if guard is None else guard.room + upload.stored  # its own are in `used`
        part = base.part_of(upload)
        part.open(upload.offset)
        now = time.monotonic()
        return cls(upload, part, room, upload.offset, now, now, upload.offset)

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
        due = now - self.last_sync >= base.CHECKPOINT_SECONDS
        if position - self.acknowledged >= base.CHECKPOINT_BYTES or due:
            self.checkpoint()
        elif now - self.last_tick >= base.TICK_SECONDS:
            if position - self.ticked_at <= (now - self.last_tick) * base.SLOW_RATE:
                self.checkpoint()  # a slow link: the sync is cheap
            else:
                self.tick()

    def tick(self) -> None:
        """Record the bytes the file takes and move the expiry on, without a sync."""
        self.upload.stored = stored = self.part.allocated()
        self._record(stored=stored)
        self.last_tick, self.ticked_at = time.monotonic(), self.part.position

    def _record(self, **fields: Any) -> None:
        try:
            base.record(self.upload, **fields)
        except UploadNotFound:  # DELETEd meanwhile: its bytes go too
            self.part.remove()
            raise

    def check_quota(self) -> None:
        if self.room is not None and self.part.path.stat().st_blocks * 512 > self.room:
            raise UploadTooLarge(
                f"Storage quota exceeded: this upload now takes more than the {max(self.room, 0)} "
                "bytes the owner's quota leaves. What arrived before is kept; free space and "
                "resume, or abandon the upload."
            )


def receive(
    appender: Appender,
    read: Callable[[int], bytes],
    tee: Callable[[int, bytes], None] | None = None,
) -> None:
    """Append what ``read`` gives to the upload's file (telling ``tee`` how far the file
    goes after each piece), syncing and acknowledging it at checkpoints, and at the end
    when it ends with an error (a cut included) or has no ``tee`` (with one, the caller
    commits or checkpoints)."""
    upload, part = appender.upload, appender.part
    limit = base.stream_limit(upload)
    try:
        while data := read(CHUNK):
            if part.position + len(data) > limit:
                part.append(data[: limit - part.position])
                raise base.too_long(upload, limit)
            part.append(data)
            appender.check_quota()
            if tee is not None:
                try:
                    tee(part.position, data)
                except DomainError as exc:
                    raise base.Refused(exc) from exc
            appender.appended()
    except BaseException:
        if part.position != appender.acknowledged:
            with contextlib.suppress(Exception):  # keep what arrived; the error says the rest
                appender.checkpoint()
        raise
    if tee is None:
        appender.checkpoint()


def complete(
    actor: Any, upload: ResumableUpload, appender: Appender, read: Callable[[int], bytes]
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
        raw_at_least=max(0, max(upload.offset, upload.length or 0) - base.ENVELOPE) * 99 // 100,
    )
    part = appender.part
    # Its bytes count once: as the version the receiver writes, not also as the upload's.
    ResumableUpload.objects.filter(pk=upload.pk).update(stored=0)
    try:
        with receiver:
            receiver.declare_encoding(upload.encoding or None)
            _feed(receiver, appender, read, f"upload-{upload.pk}")
            if upload.length is not None and part.position != upload.length:
                raise UploadLengthMismatch(
                    f"The upload was announced as {upload.length} bytes (Upload-Length) but "
                    f"ends at {part.position}."
                )
            ResumableUpload.objects.filter(pk=upload.pk).update(stored=0)  # as above

            def completed(version: Version) -> None:  # in the version's own transaction
                ResumableUpload.objects.filter(pk=upload.pk).update(
                    state=UploadState.COMPLETE,
                    version=version,
                    offset=part.position,
                    stored=0,
                    updated_at=timezone.now(),
                )

            try:
                version = version_upload(
                    actor=actor,
                    image=image,
                    receiver=receiver,
                    expected_sha256=upload.expected_sha256 or None,
                    note=upload.note,
                    recorded=completed,
                )
            except DomainError as exc:
                raise base.Refused(exc) from exc
    except base.Refused as refused:
        part.remove()
        base.fail(upload, refused.error)
        raise refused.error from None
    except BaseException:  # cut, or a length or size refused: it stays resumable
        with contextlib.suppress(Exception):  # (a cut was acknowledged by receive already)
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
    upload.refresh_from_db()
    return version


def _feed(
    receiver: VersionReceiver, appender: Appender, read: Callable[[int], bytes], name: str
) -> None:
    """The file holds exactly what was acknowledged; a follower feeds it to the receiver
    behind this request's appends (.follow)."""
    part = appender.part
    with part.reader() as source:
        follower = Follower(source, receiver.write, name=name)
        try:
            try:
                follower.advance(part.position)
            except DomainError as exc:
                raise base.Refused(exc) from exc
            started = time.monotonic()
            receive(appender, read, tee=follower.advance)
            received = time.monotonic()
            try:
                follower.finish(part.position)
            except DomainError as exc:
                raise base.Refused(exc) from exc
        finally:
            follower.stop()
    logger.debug(
        "Resumable upload %s: %d bytes received in %.2f s, decoded %.2f s later",
        appender.upload.token,
        part.position - appender.upload.offset,
        received - started,
        time.monotonic() - received,
    )
