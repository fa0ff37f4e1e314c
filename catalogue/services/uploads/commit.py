"""Committing a received upload: the digest it must match, durability, the next number.

:func:`version_upload` finishes the receiver, checks the expected digest,
fsyncs, and — under a lock on the image row — picks the next number, puts
the file in place and creates the row. Any failure before that leaves
nothing but a ``.part`` file that is removed at once (or, after a crash, by
the stale-upload purge).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from accounts.services import audit_record
from catalogue import rules
from catalogue.exceptions import BadUpload, InsufficientStorage, NotYours
from catalogue.models import FileStandard, Image, ImageType, Version
from catalogue.services.bootfiles import BootImageError, boot_files_extract
from catalogue.services.datamaps import version_map, version_map_store
from catalogue.services.digests import version_digest_ensure
from catalogue.services.lifecycle import versions_prune_schedule
from catalogue.services.pipeline import version_received
from catalogue.services.uploads.receiver import ReceivedUpload, VersionReceiver
from catalogue.services.uploads.stages import storage_call
from catalogue.storage import StoredFile, get_storage, is_disk_full


def version_upload(
    *,
    actor: Any,
    image: Image,
    receiver: VersionReceiver,
    expected_sha256: str | None = None,
    note: str = "",
    same_as: Version | None = None,
    based_on: Version | None = None,
    check: Callable[[ReceivedUpload], None] | None = None,
    recorded: Callable[[Version], None] | None = None,
) -> Version:
    """Finish ``receiver`` and store it as ``image``'s next version; return the version.

    ``expected_sha256`` (hex), when given, must equal the SHA-256 of the raw
    image or of the bytes as sent, else BadUpload and nothing is stored. Two
    uploads to one image get distinct, consecutive numbers: the number is
    chosen and the file put in place under a lock on the image's row. An
    agent's upload is noted with where it came from, and a retry of it (same
    bytes, same deployment) returns the version already made. Bytes identical
    to ``same_as`` store nothing and return ``same_as``. ``based_on``: the base of
    a delta upload (:mod:`.compose`), recorded on the version; ``check`` is called
    with what arrived before anything is stored, and refuses it by raising; ``recorded``
    with the version returned, inside the transaction that creates its row (a resumable
    upload marks itself complete there: one commit of the database, not two).
    Raises ``NotYours`` if ``actor`` may not write the image (any more: an upload
    may outlive the right that ``image_get_writable`` checked before it began).
    """
    if not rules.can_write_image(actor, image):
        raise NotYours("You may read this image but not upload to it.")
    if rules.is_agent(actor):
        note = actor.upload_note(image.pk)
    # An agent's whole upload is hashed now, to know a retry; a delta is known by its map.
    agent_whole = rules.is_agent(actor) and based_on is None
    needed_now = bool(expected_sha256) or same_as is not None or agent_whole
    received = receiver.finish(need_digest=needed_now or image.type == ImageType.BOOT)
    _check_digest(received, expected_sha256)
    if check is not None:
        check(received)
    if same_as is not None:
        version_digest_ensure(same_as)
    if same_as is not None and (received.size, received.sha256) == (same_as.size, same_as.sha256):
        receiver.abort()  # the very bytes of that version: nothing new to store
        if recorded is not None:
            with transaction.atomic():
                recorded(same_as)
        return same_as
    pending = receiver.pending
    assert pending is not None  # the receiver finished: its upload started
    _fsync_path(pending.path)  # the slow part of durability, outside the lock
    record = recorded or (lambda version: None)
    return _store(actor, image, receiver, received, note, based_on, record)


def _store(
    actor: Any,
    image: Image,
    receiver: VersionReceiver,
    received: ReceivedUpload,
    note: str,
    based_on: Version | None,
    recorded: Callable[[Version], None],
) -> Version:
    """Under a lock on the image's row: the next number, the file in place, the row, its map,
    and what the caller records with them; a failure leaves none of them."""
    placed: StoredFile | None = None
    mapped: int | None = None  # the number whose map was written
    try:
        with transaction.atomic():
            locked = Image.objects.select_for_update().get(pk=image.pk)
            if rules.is_agent(actor) and (same := _same_sync(locked, received, note, based_on)):
                receiver.abort()
                recorded(same)
                return same
            number = _next_free_number(locked)
            placed = receiver.commit(number, received.stored_compression)
            _check_boot_image(locked, placed, received)
            version = _version_row(locked, number, received, placed, actor, note, based_on)
            if received.datamap is not None:
                mapped = number
                storage_call(version_map_store, version, received.datamap)
            recorded(version)
    except BaseException:
        if placed is not None:  # the row never became visible: neither may the file
            placed.path.unlink(missing_ok=True)
        if mapped is not None:  # nor its map
            get_storage().delete_map(image.uuid, mapped)
        raise
    return version


def _same_sync(
    image: Image, received: ReceivedUpload, note: str, based_on: Version | None = None
) -> Version | None:
    """The version an agent already uploaded with these bytes, if this is a retry.

    An agent whose answer was lost (the connection broke after the commit)
    sends the same disk again: it gets the version it made, not a duplicate.
    A large delta's SHA-256 comes later: it is known by its base and data map.
    """
    if received.sha256:
        return Version.objects.filter(image=image, sha256=received.sha256, note=note).first()
    if based_on is None or received.datamap is None:
        return None
    wanted = _map_key(received.datamap)
    for version in Version.objects.filter(image=image, note=note, based_on=based_on.number):
        found = version_map(version)
        if found is not None and _map_key(found) == wanted:
            return version
    return None


def _map_key(datamap: Any) -> tuple[Any, ...]:
    return (datamap.size, [r[:2] for r in datamap.ranges], datamap.blake3)


def _check_boot_image(image: Image, placed: StoredFile, received: ReceivedUpload) -> None:
    """A boot image takes only a boot partition BAAS can boot (whose files are extracted now).

    Checked on the complete file in its place, before its row exists: a refusal
    removes it like any failed upload.
    """
    if image.type != ImageType.BOOT:
        return
    if image.file_standard != FileStandard.RAW:
        raise BadUpload("A boot image is a raw boot partition, not qcow2; nothing was stored.")
    try:
        if received.size > settings.BAAS_BOOT_IMAGE_MAX_SIZE:
            raise BootImageError(
                "A boot image is a small boot partition: at most "
                f"{settings.BAAS_BOOT_IMAGE_MAX_SIZE} bytes, not {received.size}."
            )
        boot_files_extract(
            image_uuid=image.uuid,
            sha256=received.sha256,
            path=placed.path,
            compression=received.stored_compression,
        )
    except BootImageError as exc:
        raise BadUpload(f"{exc} Nothing was stored.") from exc


def _check_digest(received: ReceivedUpload, expected: str | None) -> None:
    if expected and expected.lower() not in (received.sha256, received.wire_sha256):
        raise BadUpload(
            f"SHA-256 mismatch: you sent {expected.lower()}, the server received "
            f"{received.sha256}. Nothing was stored; upload again."
        )


def _fsync_path(path) -> None:
    """fsync through a descriptor of our own: Linux flushes the file's pages whoever wrote them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if is_disk_full(exc):  # delayed allocation may only fail now
            raise InsufficientStorage() from exc
        raise
    finally:
        os.close(fd)


def _next_free_number(image: Image) -> int:
    """max + 1 of the rows (never 0: that is the empty image). Files a crash left under that
    number without a row are debris: removed (logged), never a reason to skip a number.
    The caller holds the lock on the image's row."""
    latest = Version.objects.filter(image=image).aggregate(latest=Max("number"))["latest"] or 0
    number = latest + 1
    get_storage().clear_debris(image.uuid, number)
    return number


def _version_row(
    image: Image,
    number: int,
    received: ReceivedUpload,
    placed: StoredFile,
    actor: Any,
    note: str,
    based_on: Version | None = None,
) -> Version:
    version = Version.objects.create(
        image=image,
        number=number,
        size=received.size,
        virtual_size=received.virtual_size,
        sha256=received.sha256,
        stored_size=placed.allocated,
        stored_compression=received.stored_compression,
        uploaded_by=actor if getattr(actor, "pk", None) else None,
        note=note,
        based_on=based_on.number if based_on is not None else None,
    )
    audit_record(
        actor=actor,
        action="version.upload",
        target=version,
        image=str(image.uuid),
        number=number,
        size=received.size,
        sha256=received.sha256,
        encoding=received.encoding,
        **({"based_on": based_on.number} if based_on is not None else {}),
    )
    version_received(version)  # what it owes (SHA-256, map, compression, raw disk): after commit
    versions_prune_schedule(image)
    return version
