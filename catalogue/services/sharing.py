"""A new version shares its unchanged blocks with the version before it (reflinks).

The last step of a version's processing (``catalogue.services.pipeline``), on a
filesystem that can share blocks (XFS with ``reflink=1``, btrfs): the
version's data map is compared with its base's — the version it was made from
(a delta sync-back's base), else the newest older version of the image stored
in the same compression — and every range that may hold the
same bytes is handed to the store, which has the kernel compare them and share
the equal ones (``FIDEDUPERANGE``). Raw files share any equal run of 64 KiB and
more; zstd files, whose frames follow the data map on block boundaries
(``diskimage.seekable``), share the frames of the ranges that did not change
(``diskimage.sharing``). Ten versions that each change 1 % of the data then
hold little more than one on the disk.

It never changes a byte (the kernel shares equal bytes only), so it needs no
check afterwards; it runs under the version's job lock, and the store records
on the version's file that it ran, so it is owed once per file (a file swapped
in by the compression step owes it again). Where blocks cannot be shared
(ext4, tmpfs, NFS) it is never owed: nothing gets slower there.
"""

from __future__ import annotations

import logging

from catalogue.models import Compression, FileStandard, Version
from catalogue.services.datamaps import version_map
from catalogue.storage import get_storage
from diskimage.extents import Candidate
from diskimage.seekable import read_seek_table
from diskimage.sharing import raw_candidates, zstd_candidates

logger = logging.getLogger(__name__)

SHAREABLE = (Compression.NONE, Compression.ZSTD)


def share_owed(version: Version) -> bool:
    """Whether the version's file should still be made to share with its base
    (``version.image`` is read): a raw image stored raw or zstd, on a filesystem that
    can share, whose file has no record of it yet."""
    if version.image.file_standard != FileStandard.RAW:
        return False
    if version.stored_compression not in SHAREABLE:
        return False
    storage = get_storage()
    if not storage.can_share():
        return False
    try:
        record = storage.share_record(version.image_id, version.number, version.stored_compression)
    except OSError:
        return False  # no file, or no extended attributes here: nothing to record it on
    return record is None


def share_base(version: Version) -> Version | None:
    """The version it shares with: the one it was made from (a delta sync-back's base) if
    that one qualifies, else the newest older one stored in the same compression, not
    damaged, with its data map."""
    older = (
        Version.objects.filter(
            image_id=version.image_id,
            number__lt=version.number,
            stored_compression=version.stored_compression,
            damaged="",
        )
        .exclude(sha256="")
        .order_by("-number")
    )
    made_from = list(older.filter(number=version.based_on)) if version.based_on is not None else []
    for candidate in [*made_from, *older[:3]]:
        if version_map(candidate) is not None:
            return candidate
    return None


def version_share(*, version_id: int, base_number: int | None = None) -> int | None:
    """Make version ``version_id``'s file share its unchanged blocks with its base
    (``base_number``, or :func:`share_base`); the bytes shared, None when the version
    is gone. Idempotent; the caller holds the version's job lock (the pipeline's)."""
    version = Version.objects.select_related("image").filter(pk=version_id).first()
    if version is None:
        return None
    if base_number is None:
        base = share_base(version)
    else:
        base = Version.objects.filter(image_id=version.image_id, number=base_number).first()
    candidates = _candidates(version, base) if base is not None else []
    storage = get_storage()
    try:
        shared = storage.version_share(
            version.image_id,
            version.number,
            version.stored_compression,
            base=base.number if base is not None else None,
            candidates=candidates,
        )
    except FileNotFoundError:
        return None  # deleted (or swapped) meanwhile: a swapped file owes it again
    logger.info(
        "Version %s of %s shares %s bytes with version %s",
        version.number,
        version.image_id,
        shared,
        base.number if base is not None else None,
    )
    return shared


def _candidates(version: Version, base: Version) -> list[Candidate]:
    new_map, old_map = version_map(version), version_map(base)
    if new_map is None or old_map is None:
        return []
    if version.stored_compression == Compression.NONE:
        return raw_candidates(old_map, new_map)
    storage = get_storage()
    try:
        with storage.open_read(version.image_id, version.number, Compression.ZSTD) as new:
            new_frames = read_seek_table(new.fileno())
        with storage.open_read(base.image_id, base.number, Compression.ZSTD) as old:
            old_frames = read_seek_table(old.fileno())
    except FileNotFoundError:
        return []
    if new_frames is None or old_frames is None:
        return []
    return zstd_candidates(old_map, old_frames, new_map, new_frames)
