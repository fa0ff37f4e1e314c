"""A resumable upload decoded as it arrives: an Android sparse image, straight into the raw
image its version will be, its decoder's state kept from one request to the next.

A sparse upload's bytes go through the very receiver a plain upload's go through
(:class:`VersionReceiver`: decoder, holes, map, checks, then :func:`version_upload`'s
atomic commit), into a pending file that outlives the request: the upload's ``.part``
(:class:`~catalogue.storage.DecodedPart`), which holds the raw image decoded so far
rather than the bytes as sent. Nothing is decoded twice, and a resumed upload reads
nothing again but the data range its map had open (at most ``RANGE_MAX``, for its
hashes) — and, for an image small enough to be hashed whole now, what came before.

**Checkpoints.** The state of the receiver after a byte of the stream (the sparse
decoder's position in its chunk, the map's ranges, the counts of the checks: plain
values, :meth:`VersionReceiver.checkpoint`) is recorded in the row with that byte's
offset, once the map and writer have written everything before it and the file is
synced: the offset acknowledged (``HEAD``) is always one whose raw image is on the disk
with the state to go on from it. A request takes one when it ends other than by
completing (a cut included), every CHECKPOINT_BYTES or CHECKPOINT_SECONDS, every
TICK_SECONDS on a slow link, and when a ``HEAD`` asks: the prober bumps
``probes_asked`` and waits (at most PROBE_WAIT_SECONDS) for the appender, which looks
every ASK_SECONDS, to answer with a checkpoint. A crash between checkpoints loses what
came after the last one: the next request cuts the file back to the checkpoint's length
(where bytes written later would otherwise lie where holes belong) and goes on from it.

The image refused on the way (a corrupt sparse image, a raw image holding qcow2) fails
the upload as a refusal at completion would; a cut, a quota or size refusal, leaves it
resumable from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils import timezone

from baas_site.exceptions import DomainError
from catalogue.exceptions import (
    InsufficientStorage,
    UploadLengthMismatch,
    UploadNotFound,
    UploadTooLarge,
)
from catalogue.models import Image, ImageType, ResumableUpload, UploadState, Version
from catalogue.services.uploads import resumable_base as base
from catalogue.services.uploads.commit import version_upload
from catalogue.services.uploads.receiver import VersionReceiver
from catalogue.services.uploads.stages import storage_call
from catalogue.storage import DecodedPart
from diskimage import CHUNK
from diskimage.decoders import SPARSE

# How often a running append looks whether a HEAD asks it for a checkpoint (one query).
ASK_SECONDS = 0.1
# How long a HEAD waits for that checkpoint before it answers the last one.
PROBE_WAIT_SECONDS = 3.0
# On a fast link, how often a running append records the bytes its file takes (the quota of
# the owner's other uploads counts them). An UPDATE commits, and a commit of SQLite syncs
# its journal, which on ext4 waits for the data written so far: tens of milliseconds of
# this request's thread, each second. An abandoned upload is noticed at every look anyway.
RECORD_SECONDS = 5.0
# Refusals that leave the upload resumable (from its last checkpoint): not of the image.
RESUMABLE_ERRORS = (UploadTooLarge, InsufficientStorage, UploadLengthMismatch, UploadNotFound)


def decodes_as_it_arrives(
    *, encoding: str | None, expected_sha256: str | None, want_digest: bool, image: Image
) -> bool:
    """Whether an upload is decoded as it arrives: a declared sparse image whose digest
    nobody asked for now (a digest may be of the bytes as sent: those are kept)."""
    return (
        encoding == SPARSE
        and not expected_sha256
        and not want_digest
        and image.type != ImageType.BOOT
    )


class _Decoding:
    """One request's bytes into the receiver, with the checkpoints that acknowledge them."""

    def __init__(self, upload: ResumableUpload, receiver: VersionReceiver, pending: DecodedPart):
        self.upload, self.receiver, self.pending = upload, receiver, pending
        self.position = self.acknowledged = upload.offset
        now = time.monotonic()
        self.last_checkpoint = self.last_tick = self.last_look = self.last_record = now
        self.ticked_at = upload.offset
        self.answered = upload.probes_answered
        self.broken = False  # the receiver raised: its state may be past ``position``

    def receive(self, read: Callable[[int], bytes]) -> None:
        limit = base.stream_limit(self.upload)
        while data := read(CHUNK):
            if self.position + len(data) > limit:
                self._write(data[: limit - self.position])
                raise base.too_long(self.upload, limit)
            self._write(data)
            now = time.monotonic()
            if now - self.last_look >= ASK_SECONDS:
                self._look(now)

    def _write(self, data: bytes) -> None:
        try:
            self.receiver.write(data)
        except RESUMABLE_ERRORS:
            self.broken = True  # some of ``data`` may be decoded: the last checkpoint stands
            raise
        except DomainError as exc:
            raise base.Refused(exc) from exc
        self.position += len(data)

    def _look(self, now: float) -> None:
        """A checkpoint when one is due or a HEAD asks for it; else, now and then, a tick."""
        self.last_look = now
        asked = (
            ResumableUpload.objects.filter(pk=self.upload.pk, state=UploadState.RECEIVING)
            .values_list("probes_asked", flat=True)
            .first()
        )
        if asked is None:
            raise UploadNotFound("This upload was abandoned while this request appended to it.")
        unsynced = self.position - self.acknowledged
        if (
            asked > self.answered
            or unsynced >= base.CHECKPOINT_BYTES
            or now - self.last_checkpoint >= base.CHECKPOINT_SECONDS
        ):
            self.checkpoint(asked)
        elif now - self.last_tick >= base.TICK_SECONDS:
            if self.position - self.ticked_at <= (now - self.last_tick) * base.SLOW_RATE:
                self.checkpoint(asked)  # a slow link: the sync is cheap
                return
            if now - self.last_record >= RECORD_SECONDS:
                base.record(self.upload, stored=self.pending.allocated())
                self.last_record = now
            self.last_tick, self.ticked_at = now, self.position

    def checkpoint(self, asked: int | None = None) -> None:
        """Everything received so far made durable (decoded, written, synced), then
        acknowledged with the state to go on from it. Never after the receiver raised."""
        if self.broken:
            raise RuntimeError("The receiver failed mid-piece: its last checkpoint stands.")
        state = self.receiver.checkpoint()
        stored = storage_call(self.pending.sync)
        fields: dict[str, Any] = {"offset": self.position, "decoded": state, "stored": stored}
        if asked is not None:
            fields["probes_answered"] = asked
            self.answered = asked
        base.record(self.upload, **fields)
        self.upload.offset = self.acknowledged = self.position
        self.upload.stored = stored
        self.last_checkpoint = self.last_tick = self.last_record = time.monotonic()
        self.ticked_at = self.position


def append_decoded(
    *, actor: Any, upload: ResumableUpload, read: Callable[[int], bytes], complete: bool
) -> Version | None:
    """Decode what ``read`` gives on from the upload's last checkpoint; if ``complete``,
    commit the version. The caller holds the upload's append lock and checked the offset."""
    image = Image.objects.get(pk=upload.image_id)
    state: dict[str, Any] = upload.decoded or {}
    pending = storage_call(base.part_of(upload).decoded, int(state.get("written", 0)))
    # While it runs, its file counts in the quota through the receiver, as a plain upload's
    # (a fresh upload's row says 0 already: no write, no commit).
    if upload.stored:
        ResumableUpload.objects.filter(pk=upload.pk).update(stored=0)
    receiver = VersionReceiver(
        image=image,
        max_size=settings.BAAS_MAX_IMAGE_SIZE,
        wire_digest=False,
        raw_at_least=max(0, max(upload.offset, upload.length or 0) - base.ENVELOPE) * 99 // 100,
        pending=pending,
    )
    decoding = _Decoding(upload, receiver, pending)
    try:
        with receiver:
            receiver.declare_encoding(upload.encoding or None)
            version = _run(actor, image, upload, receiver, decoding, state, read, complete)
    except base.Refused as refused:
        pending.remove()
        base.fail(upload, refused.error)
        raise refused.error from None
    except UploadNotFound:
        pending.remove()  # abandoned meanwhile: its bytes go too
        raise
    except BaseException:
        with contextlib.suppress(OSError):  # what the file takes, checkpointed or not
            stored = pending.path.stat().st_blocks * 512
            ResumableUpload.objects.filter(pk=upload.pk, state=UploadState.RECEIVING).update(
                stored=stored
            )
        raise
    finally:
        pending.abort()  # closes it; the bytes stay (or were committed, or removed)
    upload.refresh_from_db()
    return version


def _run(
    actor: Any,
    image: Image,
    upload: ResumableUpload,
    receiver: VersionReceiver,
    decoding: _Decoding,
    state: dict[str, Any],
    read: Callable[[int], bytes],
    complete: bool,
) -> Version | None:
    try:
        if state:
            receiver.restore(state)
        decoding.receive(read)
        if not complete:
            decoding.checkpoint()
            return None
        if upload.length is not None and decoding.position != upload.length:
            raise UploadLengthMismatch(
                f"The upload was announced as {upload.length} bytes (Upload-Length) but "
                f"ends at {decoding.position}."
            )
    except BaseException as exc:
        if not isinstance(exc, (base.Refused, UploadNotFound)):
            with contextlib.suppress(Exception):  # keep what arrived; the error says the rest
                if decoding.position != decoding.acknowledged:
                    decoding.checkpoint()
        raise

    def completed(version: Version) -> None:  # in the version's own transaction
        ResumableUpload.objects.filter(pk=upload.pk).update(
            state=UploadState.COMPLETE,
            version=version,
            offset=decoding.position,
            decoded=None,
            stored=0,
            updated_at=timezone.now(),
        )

    try:
        return version_upload(
            actor=actor, image=image, receiver=receiver, note=upload.note, recorded=completed
        )
    except RESUMABLE_ERRORS:
        raise
    except DomainError as exc:
        raise base.Refused(exc) from exc
