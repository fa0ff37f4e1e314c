"""Whole-image SHA-256 of versions whose upload left it to a background job.

The SHA-256 of a version's raw bytes is its identity (download digests and
ETags, what agents report, what retried syncs are matched by). Computing it
costs one pass over the whole logical image, zeros included: for a 6 GiB
image that holds 600 MiB of data, several times the cost of storing the data.
So an upload past ``BAAS_UPLOAD_INLINE_SHA256_MAX`` raw bytes answers as soon
as its data is stored and checked against the data map taken while it
streamed (every range with its own SHA-256); the row's ``sha256`` stays empty
until :func:`version_digest_complete` — a Celery job queued by the upload —
has read the stored file back, checked it against that map, and recorded
the digest with a map of its own, and the version's block hashes
(``rangehashes``): one read for all three. For an image stored compressed, the
compression step does it in the same pass as it compresses.
Both are steps of the version's processing (``catalogue.services.pipeline``).
Uploads that send or ask for a digest, agents' uploads and boot images are
hashed while they stream, as before.

Whatever needs the digest before the job ran calls :func:`version_digest_ensure`
(flashing before it starts a deployment, compression, network mounts), which
computes it on the spot. Running the job twice records the same digest once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import xxhash
from django.db import transaction

from catalogue.models import Compression, Version
from catalogue.services.codecs import DECODE_ERRORS, VersionCorrupt, version_damaged
from catalogue.services.datamaps import scan_stored, version_map, version_map_store
from catalogue.services.rangehashes import BlockHasher, hashes_store, hashes_wanted
from catalogue.stages import BackgroundHasher, BackgroundWorker
from catalogue.storage import get_storage
from diskimage import CHUNK, ZEROS
from diskimage.datamap import DataMap, DataMapper

logger = logging.getLogger(__name__)


class FrameChecksums:
    """The zstd content checksums of raw ranges (XXH64, low 32 bits), fed the raw bytes
    in order; ``ranges`` are ``(start, end, expected)``, sorted and not overlapping."""

    def __init__(self, ranges: tuple[tuple[int, int, int], ...]):
        self._ranges = list(ranges)
        self._next = 0  # the first range not finished
        self._position = 0
        self._hash = xxhash.xxh64()
        self.found: list[tuple[int, int, int]] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and self._next < len(self._ranges):
            start, end, _ = self._ranges[self._next]
            if self._position < start:  # bytes no frame covers (none, in a zstd stream)
                step = min(len(view), start - self._position)
            else:
                step = min(len(view), end - self._position)
                self._hash.update(view[:step])
            view = view[step:]
            self._position += step
            self._close_ended()
        self._position += len(view)

    def skip(self, length: int) -> None:
        while length > 0:
            piece = min(length, CHUNK)
            self.update(ZEROS[:piece])
            length -= piece

    def finish(self) -> tuple[tuple[int, int, int], ...]:
        """What the bytes fed hash to, per range (a range not reached: -1)."""
        self._close_ended()
        found = self.found + [(s, e, -1) for s, e, _ in self._ranges[len(self.found) :]]
        return tuple(found)

    def _close_ended(self) -> None:
        while self._next < len(self._ranges):
            start, end, _ = self._ranges[self._next]
            if self._position < end:
                return
            self.found.append((start, end, self._hash.intdigest() & 0xFFFFFFFF))
            self._hash.reset()
            self._next += 1


class DigestingMapper:
    """A DataMapper that also hashes every byte, holes included, on a thread of its own.

    ``zstd_checksums``: the frame checksums a large zstd upload left to check
    (``DataMap.zstd_checksums``); the map returned by :meth:`finish` carries
    what the bytes hash to instead, for the caller to compare. ``on_data``: as
    :class:`~diskimage.datamap.DataMapper`'s (a ``rangehashes.BlockHasher``'s).
    """

    def __init__(
        self,
        zstd_checksums: tuple[tuple[int, int, int], ...] | None = None,
        on_data: Callable[[memoryview, int], None] | None = None,
    ) -> None:
        self.mapper = DataMapper(on_data)
        self._hasher = BackgroundHasher()
        self._checksums = FrameChecksums(zstd_checksums) if zstd_checksums else None
        self._checking = (
            BackgroundWorker(self._check, name="xxh64") if self._checksums is not None else None
        )

    @property
    def size(self) -> int:
        return self.mapper.size

    def update(self, data: bytes) -> None:
        self.mapper.update(data)
        self._hasher.update(data)
        if self._checking is not None:
            self._checking.put(data)

    def skip(self, length: int) -> None:
        self.mapper.skip(length)
        if self._checking is not None:
            self._checking.put(length)
        while length > 0:
            piece = min(length, CHUNK)
            self._hasher.update(ZEROS[:piece])
            length -= piece

    def _check(self, item: bytes | int) -> None:
        assert self._checksums is not None  # the check runs only when there are checksums
        if isinstance(item, int):
            self._checksums.skip(item)
        else:
            self._checksums.update(item)

    def finish(self) -> DataMap:
        """The map, carrying the SHA-256 of all the bytes fed (and their frame checksums)."""
        found = self.mapper.finish(self._hasher.hexdigest())
        if self._checking is None or self._checksums is None:
            return found
        self._checking.join()
        return replace(found, zstd_checksums=self._checksums.finish())

    def close(self) -> None:
        self._hasher.close()
        if self._checking is not None:
            self._checking.close()


def file_digest(
    path: Path,
    compression: str,
    size: int,
    zstd_checksums: tuple[tuple[int, int, int], ...] | None = None,
    on_data: Callable[[memoryview, int], None] | None = None,
) -> DataMap:
    """The data map and SHA-256 of ``size`` raw bytes stored at ``path`` in ``compression``
    (and the frame checksums of ``zstd_checksums``' ranges, see :class:`DigestingMapper`;
    the data handed to ``on_data`` too).

    A raw file shorter than ``size`` ends in zeros (an upload not yet put in
    place has no trailing holes). VersionCorrupt if the file holds more: for a
    compressed file, DecodedTooLarge as soon as its output passes ``size``.
    """
    scanner = DigestingMapper(zstd_checksums, on_data)
    try:
        scan_stored(open(path, "rb"), compression, scanner, limit=size)  # noqa: SIM115 - closed by scan_stored
        if scanner.size > size:
            raise VersionCorrupt(f"{path} holds {scanner.size} raw bytes, not {size}")
        if compression == Compression.NONE and scanner.size < size:
            scanner.skip(size - scanner.size)  # trailing holes: they start on a block
        return scanner.finish()
    finally:
        scanner.close()


def version_digest_complete(*, version_id: int) -> str | None:
    """Record the SHA-256 of a version stored without one; return it (None if it is gone).

    Reads the stored file back and checks it against the data map its upload
    took: a file that changed on disk since raises VersionCorrupt and is left
    without a digest.
    """
    version = Version.objects.select_related("image").filter(pk=version_id).first()
    if version is None:
        return None
    if version.sha256:
        return version.sha256
    if version.damaged:
        raise VersionCorrupt(version.damaged)
    uploaded = version_map(version)
    path = get_storage().version_path(version.image_id, version.number, version.stored_compression)
    with BlockHasher() if hashes_wanted(version, uploaded) else contextlib.nullcontext() as hasher:
        try:
            found = file_digest(
                path,
                version.stored_compression,
                version.size,
                uploaded.zstd_checksums if uploaded is not None else None,
                on_data=hasher.data if hasher is not None else None,
            )
        except FileNotFoundError:
            if not Version.objects.filter(pk=version_id).exists():
                return None
            raise
        except VersionCorrupt as exc:  # more bytes than the row says (a zstd header that lied)
            raise version_damaged(version, str(exc)) from exc
        except DECODE_ERRORS as exc:  # a compressed upload stored as sent, damaged on the way
            raise version_damaged(
                version,
                f"Version {version.number} does not decode ({exc}): the upload was damaged on "
                "the way; upload it again.",
            ) from exc
        digest = version_digest_record(version, found, uploaded)
        if digest is not None and hasher is not None:  # the bytes checked: their block hashes
            hashes_store(version, found, hasher.finish())
    return digest


def version_digest_record(version: Version, found: DataMap, uploaded: DataMap | None) -> str | None:
    """Record ``found`` — the map and SHA-256 of the version's stored bytes, read back — as
    the version's, once checked against the map its upload took (``uploaded``); return the
    digest (None if the version is gone). Raises VersionCorrupt, the version recorded as
    damaged, if the bytes are not what was uploaded."""
    if found.size != version.size:
        reason = f"Version {version.number} is {version.size} bytes, its file {found.size}."
        raise version_damaged(version, reason)
    if uploaded is not None and _data_differs(uploaded, found):
        raise version_damaged(
            version,
            f"The stored file of version {version.number} no longer holds the data its upload "
            "sent (its data map differs); upload it again.",
        )
    if uploaded is not None and uploaded.zstd_checksums != found.zstd_checksums:
        raise version_damaged(
            version,
            f"Version {version.number} does not hold what its zstd upload was compressed "
            "from (a frame checksum differs): the upload was damaged on the way; upload it again.",
        )
    return _record(version, replace(found, zstd_checksums=None))


def _data_differs(uploaded: DataMap, found: DataMap) -> bool:
    """Whether the ranges differ, or a hash both maps have (a large upload's map has
    only the BLAKE3s: the SHA-256s are this job's)."""
    if [r[:2] for r in uploaded.ranges] != [r[:2] for r in found.ranges]:
        return True
    if uploaded.blake3 is not None and found.blake3 is not None and uploaded.blake3 != found.blake3:
        return True
    return any(a[2] and a[2] != b[2] for a, b in zip(uploaded.ranges, found.ranges, strict=True))


def _record(version: Version, found: DataMap) -> str | None:
    with transaction.atomic():
        rows = Version.objects.select_for_update().select_related("image").filter(pk=version.pk)
        row = rows.first()
        if row is None:
            return None
        if row.sha256:
            return row.sha256  # a concurrent run recorded it
        row.sha256 = found.sha256
        row.save(update_fields=["sha256"])
        version_map_store(row, found)
    logger.info("SHA-256 of version %s: %s", row.pk, row.sha256)
    return row.sha256


def version_digest_ensure(version: Version) -> str:
    """The version's SHA-256, computed now if its upload left it to later; sets it on ``version``.

    Raises Version.DoesNotExist if the version was deleted meanwhile, VersionCorrupt
    if its stored file no longer holds what was uploaded.
    """
    if not version.sha256:
        digest = version_digest_complete(version_id=version.pk)
        if digest is None:
            raise Version.DoesNotExist(f"Version {version.pk} was deleted.")
        version.sha256 = digest
    return version.sha256


def version_read_back(version: Version) -> str | None:
    """Read the stored file of ``version`` back whole and compare its SHA-256 with the row's:
    None when they agree (or there is nothing to compare yet: no digest recorded, or the
    version is known damaged), else why not, in plain words. Reads only."""
    if not version.sha256 or version.damaged:
        return None
    path = get_storage().version_file(version.image_id, version.number, version.stored_compression)
    if path is None:
        return f"its file {version.number}.{version.stored_compression} is missing"
    try:
        found = file_digest(path, version.stored_compression, version.size)
    except (VersionCorrupt, *DECODE_ERRORS) as exc:
        return f"its file does not decode to {version.size} bytes ({exc})"
    if found.size != version.size:
        return f"its file holds {found.size} bytes, not {version.size}"
    if found.sha256 != version.sha256:
        return f"its file's SHA-256 is {found.sha256}, not {version.sha256}"
    return None
