"""Data maps of versions (``diskimage.datamap``): store, read, build.

An upload builds its version's map while the bytes stream by; version 0 of a
raw image has an empty one. For a version without a map (stored before maps
existed, or whose map was lost) the version's processing
(``catalogue.services.pipeline``) builds it from the stored file with
:func:`version_map_build`: a raw file is read hole by hole (only its data is
read), a compressed one is decoded as a stream; the version's block hashes are
computed in the same read (``rangehashes``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import BinaryIO, Protocol

from catalogue.models import Compression, Version
from catalogue.services.codecs import (
    DECODE_ERRORS,
    MapMismatch,
    VersionCorrupt,
    raw_reader,
    version_damaged,
)
from catalogue.services.rangehashes import BlockHasher, hashes_store, hashes_wanted
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.datamap import DataMap, DataMapper
from diskimage.holes import data_extents

logger = logging.getLogger(__name__)
READ = 1 << 20


def version_map_store(version: Version, datamap: DataMap) -> None:
    """Store ``datamap`` as ``version``'s map (it must describe that version)."""
    if datamap.size != version.size or datamap.sha256 != version.sha256:
        raise MapMismatch(f"the map is of other bytes than version {version.pk}")
    get_storage().map_write(version.image_id, version.number, datamap.dumps())


def version_map(version: Version) -> DataMap | None:
    """The version's map, or None if it has none (or one of other bytes)."""
    raw = get_storage().map_read(version.image_id, version.number)
    if raw is None:
        return None
    try:
        datamap = DataMap.loads(raw)
    except (ValueError, KeyError, TypeError):
        logger.warning("The data map of version %s is unreadable; rebuilding it", version.pk)
        return None
    if datamap.size != version.size or datamap.sha256 != version.sha256:
        logger.warning("The data map of version %s is of other bytes; rebuilding it", version.pk)
        return None
    return datamap


def version_map_build(*, version_id: int) -> DataMap | None:
    """Build and store the map of a version from its stored file; None if it is gone.

    Running it again rebuilds the same map. Raises MapMismatch if the stored
    bytes are not the version's size.
    """
    version = Version.objects.select_related("image").filter(pk=version_id).first()
    if version is None:
        return None
    existing = version_map(version)
    if existing is not None:
        return existing
    storage = get_storage()
    try:
        stored = storage.open_read(version.image_id, version.number, version.stored_compression)
    except FileNotFoundError:
        return None  # deleted, or swapped by compression meanwhile: a later run finds it
    with BlockHasher() if hashes_wanted(version, None) else contextlib.nullcontext() as hasher:
        mapper = DataMapper(hasher.data if hasher is not None else None)  # block hashes too
        try:
            scan_stored(stored, version.stored_compression, mapper, limit=version.size)
        except VersionCorrupt as exc:
            raise version_damaged(version, str(exc)) from exc
        except DECODE_ERRORS as exc:
            reason = f"Version {version.number} does not decode ({exc}); upload it again."
            raise version_damaged(version, reason) from exc
        if mapper.size != version.size:
            raise MapMismatch(
                f"version {version.pk} is {version.size} bytes, its file holds {mapper.size}"
            )
        datamap = mapper.finish(version.sha256)
        version_map_store(version, datamap)
        if hasher is not None:
            hashes_store(version, datamap, hasher.finish())
    logger.info(
        "Data map of version %s: %d ranges, %d data bytes",
        version.pk,
        len(datamap.ranges),
        datamap.data_bytes,
    )
    return datamap


class Scanner(Protocol):
    """What a stored file's raw bytes are fed to: a DataMapper, or a tee of it."""

    def update(self, data: bytes) -> None: ...

    def skip(self, length: int) -> None: ...


def scan_stored(stored: BinaryIO, compression: str, mapper: Scanner, *, limit: int) -> None:
    """Feed the raw bytes of ``stored`` (a file in ``compression``) to ``mapper``; close it.

    Raises DecodedTooLarge as soon as a compressed file decodes past ``limit`` bytes."""
    with stored:
        if compression == Compression.NONE:
            scan_sparse_file(stored, mapper)
        else:
            with raw_reader(stored, compression, limit=limit) as raw:
                while chunk := raw.read(READ):
                    mapper.update(chunk)


def scan_sparse_file(file: BinaryIO, mapper: Scanner) -> None:
    """Feed a raw file: holes are skipped without reading, data is read and scanned
    (in whole blocks: data found inside one is read whole)."""
    fd = file.fileno()
    size = os.fstat(fd).st_size
    position = 0
    for start, end in data_extents(fd, 0, size, align=BLOCK):
        if start > position:
            mapper.skip(start - position)
        _map_range(fd, start, end, mapper)
        position = end
    if position < size:  # a hole to the end (which may end mid-block)
        mapper.skip(size - position)


def _map_range(fd: int, position: int, end: int, mapper: Scanner) -> None:
    while position < end:
        chunk = os.pread(fd, min(READ, end - position), position)
        if not chunk:
            raise MapMismatch(f"the file ended at byte {position} of {end}")
        mapper.update(chunk)
        position += len(chunk)
