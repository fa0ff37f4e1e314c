"""Versions stored with their image's compression, swapped in without a pause.

A version is usable the moment its upload ends, whatever its compression; a
Celery job then rewrites its file to the image's compression (zstd
multi-threaded, gzip, or back to a sparse raw file) and swaps the new file in:

1. the stored file is streamed through its decoder, hashed, re-encoded and
   written to a new pending file (``<n>.img.zst``, ``<n>.img.gz`` or ``<n>.img``);
2. the raw size and SHA-256 must equal the version row's, or nothing is swapped;
3. the new file is committed (fsync, link into place), then the row is updated
   under a row lock, only if it did not change meanwhile;
4. only after that commit is the old file unlinked, again under the row lock.
   A download that opened the old file keeps its descriptor and completes.

Every step may be repeated: a crash between 3 and the row update leaves a
committed file that the next run verifies and adopts; a crash before the
commit leaves a ``.part`` file for the stale-upload purge; a crash after the
row update leaves the old file, which the next (no-op) run removes.

This is one step of a version's processing (``catalogue.services.pipeline``
decides when it is owed, and runs it under the version's job lock); it sends no
task. A version without its SHA-256 yet has it computed and recorded in the same
pass (``digests``): the image is read once for both; so are its block hashes, if no
earlier pass kept them (``rangehashes``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

from django.db import transaction

from catalogue.models import Compression, Image, Version
from catalogue.services.codecs import (  # (re-exported: what readers of stored files import)
    CHUNK,
    DECODE_ERRORS,
    CompressionError,
    ConcurrentChange,
    DecodedTooLarge,
    Encoder,
    Identity,
    MapMismatch,
    VersionCorrupt,
    encoder_for,
    raw_reader,
    version_damaged,
)
from catalogue.services.datamaps import version_map
from catalogue.services.digests import DigestingMapper, version_digest_record
from catalogue.services.rangehashes import BlockHasher, MappedFeed, hashes_store, hashes_wanted
from catalogue.storage import StoredFile, VersionExists, get_storage
from diskimage.datamap import DataMap
from diskimage.seekable import FramedZstdEncoder, read_seek_table

__all__ = [
    "CHUNK",
    "DECODE_ERRORS",
    "CompressionError",
    "CompressionOutcome",
    "ConcurrentChange",
    "DecodedTooLarge",
    "MapMismatch",
    "VersionCorrupt",
    "encoder_for",
    "needs_frames",
    "raw_reader",
    "version_compress",
    "version_damaged",
]

logger = logging.getLogger(__name__)

# How often one run follows an image whose compression keeps changing under it.
MAX_ROUNDS = 3


# --- The job ------------------------------------------------------------------


@dataclass(frozen=True)
class CompressionOutcome:
    version_id: int
    stored_compression: str
    changed: bool


def version_compress(*, version_id: int) -> CompressionOutcome | None:
    """Store version ``version_id`` with its image's compression; idempotent.

    Returns None when the version no longer exists, else what is stored now and
    whether this run changed it. Raises VersionCorrupt (nothing swapped) when
    the stored bytes do not match the row, ConcurrentChange when the row or
    its files changed under us, and StorageFull when the disk is full; the
    caller may simply run it again after any of the last two.
    """
    changed = False
    for _ in range(MAX_ROUNDS):
        version = Version.objects.select_related("image").filter(pk=version_id).first()
        if version is None:
            return None
        target = version.image.compression
        if version.stored_compression == target and not needs_frames(version):
            _remove_leftovers(version)
            return CompressionOutcome(version_id, target, changed)
        if version.stored_compression == target:  # zstd as uploaded: rewritten in frames
            try:
                stored = _rewrite(version, target, replace=True)
            except VersionCorrupt as exc:
                raise version_damaged(version, str(exc)) from exc
            _swap_in_place(version, stored)
            changed = True
            continue
        try:
            stored = _target_file(version, target)
        except (OSError, ConcurrentChange):
            if not Version.objects.filter(pk=version_id).exists():
                return None  # deleted with its image while we worked
            raise
        except VersionCorrupt as exc:
            raise version_damaged(version, str(exc)) from exc
        _swap(version, target, stored)
        changed = True
    raise ConcurrentChange(f"The compression of version {version_id} keeps changing.")


# --- Steps ----------------------------------------------------------------------


def _target_file(version: Version, target: str) -> StoredFile:
    """The version's bytes committed in ``target``: a past run's file if it verifies, else new."""
    storage = get_storage()
    path = storage.version_file(version.image_id, version.number, target)
    if path is not None:
        try:
            _verify(storage.open_read(version.image_id, version.number, target), target, version)
            return storage.stat(version.image_id, version.number, target)
        except VersionCorrupt:
            logger.warning("Discarding %s: it does not match version %s", path, version.pk)
            _delete_unless_referenced(version.pk, version.image_id, version.number, target)
    return _rewrite(version, target)


def needs_frames(version: Version) -> bool:
    """Whether the version is stored zstd, as its image wants, but not in frames of its data
    map (a large zstd upload is stored as sent): then agents cannot be sent its data alone,
    and the compression job rewrites it. Known once it has a map."""
    if version.stored_compression != Compression.ZSTD or version.image.compression != (
        Compression.ZSTD
    ):
        return False
    if version_map(version) is None:
        return False
    try:
        with get_storage().open_read(version.image_id, version.number, Compression.ZSTD) as f:
            return read_seek_table(f.fileno()) is None
    except FileNotFoundError:
        return False


def _rewrite(version: Version, target: str, *, replace: bool = False) -> StoredFile:
    """Transcode the stored file to ``target``, verified, and commit it beside the old one
    (``replace``: over it, the same bytes in the same compression, laid out anew)."""
    storage = get_storage()
    known = version_map(version)
    # zstd frames follow the map (the pipeline maps a version before it stores it zstd);
    # without one, the file is written unframed and framed once it has one.
    datamap = known if target == Compression.ZSTD else None
    source = _open_stored(version)
    sparse = target == Compression.NONE
    # A large upload's SHA-256 is not recorded yet: this pass computes it, on the way
    # (and checks the frame checksums of a zstd upload, which wait for it too).
    # Its block hashes too, if no earlier pass kept them (with a map to key them by, or one
    # this pass makes).
    hashing = (known is not None or not version.sha256) and hashes_wanted(version, known)
    hasher = BlockHasher() if hashing else None
    scanner = feed = None
    if not version.sha256:
        scanner = DigestingMapper(
            known.zstd_checksums if known is not None else None,
            on_data=hasher.data if hasher is not None else None,
        )
    elif hasher is not None and known is not None:
        feed = MappedFeed(known, hasher)  # the block hashes too, in the same pass
    with (
        raw_reader(source, version.stored_compression, limit=version.size) as raw,
        storage.open_write(version.image_id, sparse=sparse) as pending,
        contextlib.closing(scanner) if scanner else contextlib.nullcontext(),
        hasher if hasher is not None else contextlib.nullcontext(),
    ):
        encoder = encoder_for(target, version.size, datamap)
        try:
            _transcode(raw, encoder, pending.write, version, scanner, feed)
        except MapMismatch as exc:
            # The map is not of these bytes: drop it (a job rebuilds it), retry unframed.
            storage.delete_map(version.image_id, version.number)
            raise ConcurrentChange(f"Version {version.pk}: {exc}") from exc
        checked = known
        if scanner is not None:
            checked = _record_digest(version, scanner, known)
        if hasher is not None and checked is not None:  # of bytes now checked
            hashes_store(version, checked, hasher.finish())
        try:
            return pending.commit(version.number, target, replace=replace)
        except VersionExists:
            # A concurrent run committed the same verified bytes first.
            return storage.stat(version.image_id, version.number, target)


def _record_digest(version: Version, scanner: DigestingMapper, uploaded: DataMap | None) -> DataMap:
    """Record the SHA-256 this pass computed, checked against the upload's map (or raise
    VersionCorrupt, the version recorded as damaged); set it on ``version``. Returns the
    map of the bytes read."""
    found = scanner.finish()
    digest = version_digest_record(version, found, uploaded)
    if digest is None:
        raise ConcurrentChange(f"Version {version.pk} was deleted while it was compressed.")
    version.sha256 = digest
    return found


def _open_stored(version: Version) -> BinaryIO:
    storage = get_storage()
    try:
        return storage.open_read(version.image_id, version.number, version.stored_compression)
    except FileNotFoundError as exc:
        raise ConcurrentChange(f"The file of version {version.pk} was replaced meanwhile.") from exc


def _verify(stored: BinaryIO, compression: str, version: Version) -> None:
    """Decode ``stored`` fully and check it against the row; raise VersionCorrupt if not."""
    with raw_reader(stored, compression, limit=version.size) as raw:
        _transcode(raw, Identity(), lambda data: None, version)


def _transcode(
    raw: BinaryIO, encoder: Encoder, write, version: Version, scanner=None, feed=None
) -> None:
    """Stream ``raw`` through ``encoder`` into ``write``, checking size and SHA-256 on the way.

    With a ``scanner`` (a version without its SHA-256 yet), the bytes are fed to it
    instead, and the caller checks and records what it found. A ``feed`` is fed them too.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := raw.read(CHUNK):
            if scanner is None:
                digest.update(chunk)
            else:
                scanner.update(chunk)
            if feed is not None:
                feed.update(chunk)
            size += len(chunk)
            if out := encoder.compress(chunk):
                write(out)
        write(encoder.flush())
    except DECODE_ERRORS as exc:
        raise VersionCorrupt(f"Version {version.pk} does not decode: {exc}") from exc
    except ValueError as exc:
        if isinstance(encoder, FramedZstdEncoder):
            raise MapMismatch(str(exc)) from exc
        raise
    if scanner is None and (size != version.size or digest.hexdigest() != version.sha256):
        raise VersionCorrupt(
            f"Version {version.pk} holds {size} bytes with SHA-256 {digest.hexdigest()}, "
            f"not {version.size} bytes with {version.sha256}; left as it is."
        )


def _swap(version: Version, target: str, stored: StoredFile) -> None:
    """Point the row at the new file if it is as we read it; unlink the old file after commit."""
    old = version.stored_compression
    with transaction.atomic():
        row = Version.objects.select_for_update().filter(pk=version.pk).first()
        if row is None:
            _discard_orphan(version, target)
            return
        if row.stored_compression == target:
            return  # a concurrent run swapped the same file in
        if row.stored_compression != old or row.sha256 != version.sha256:
            raise ConcurrentChange(f"Version {version.pk} changed while it was being compressed.")
        if get_storage().version_file(version.image_id, version.number, target) is None:
            raise ConcurrentChange(f"{stored.path} was removed before the swap.")
        Version.objects.filter(pk=row.pk).update(
            stored_compression=target, stored_size=stored.allocated
        )
        transaction.on_commit(
            partial(_delete_unless_referenced, row.pk, version.image_id, version.number, old)
        )
    logger.info("Version %s is now stored as %s (%s bytes)", version.pk, target, stored.allocated)


def _swap_in_place(version: Version, stored: StoredFile) -> None:
    """Record the size of a file rewritten in place (same path, same bytes in frames)."""
    with transaction.atomic():
        row = Version.objects.select_for_update().filter(pk=version.pk).first()
        if row is None:
            _discard_orphan(version, version.stored_compression)
            return
        if row.stored_compression != version.stored_compression:
            raise ConcurrentChange(f"Version {version.pk} changed while it was being framed.")
        Version.objects.filter(pk=row.pk).update(stored_size=stored.allocated)
    logger.info("Version %s is now stored in frames (%s bytes)", version.pk, stored.allocated)


def _discard_orphan(version: Version, compression: str) -> None:
    """Remove the file written in ``compression`` for a version deleted meanwhile, and its
    image's directory if the image is gone too."""
    storage = get_storage()
    storage.delete_version(version.image_id, version.number, compression)
    if not Image.objects.filter(pk=version.image_id).exists():
        storage.prune_image_dir(version.image_id)  # only if empty


def _remove_leftovers(version: Version) -> None:
    """Unlink files of the version in other compressions, left by a crash after a swap."""
    storage = get_storage()
    for compression in Compression.values:
        if compression == version.stored_compression:
            continue
        if storage.version_file(version.image_id, version.number, compression) is not None:
            _delete_unless_referenced(version.pk, version.image_id, version.number, compression)


def _delete_unless_referenced(
    version_id: int, image_uuid: uuid.UUID, number: int, compression: str
) -> None:
    """Unlink one file of a version unless its row (locked meanwhile) points at it."""
    with transaction.atomic():
        row = Version.objects.select_for_update().filter(pk=version_id).first()
        if row is not None and row.stored_compression == compression:
            return
        get_storage().delete_version(image_uuid, number, compression)
