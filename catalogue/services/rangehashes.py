"""Block hashes of a version's ranges (``RangeHashes``): computed in the pass that stores it.

A delta re-flash and a delta sync-back compare versions by the block hashes
of their ranges (``diskimage.sparsedelta.block_hashes``: 16 bytes of BLAKE3
per 4 KiB block). Computed on first use, they cost a read (and a decode) of
every range asked for, at the moment a delta waits for them (0.2 to 0.5 s for the
33 touched ranges of the sync-back bench's disk). So the passes that
already read all of a version's data when it is stored — the map step
(``datamaps``), the digest step (``digests``) and the compression step
(``compression``) — hash its blocks on the way with a :class:`BlockHasher`,
and :func:`hashes_store` keeps them once the pass has checked the bytes
(their SHA-256, or the map they must have): hashes of bytes that turned out
not to be the version's are never kept. The first of those passes hashes;
the next ones see the hashes kept (:func:`hashes_kept`) and do not.

Versions stored before this, and versions no pass reads after their upload
(a raw image whose SHA-256 and map were both taken while it streamed), have
theirs computed on first use and kept, as before
(``versionbytes.range_hashes``, which reads and writes the cache through
:func:`cached_hashes` and :func:`cache_hashes`).

Memory stays bounded: the hashes of a pass (1/256 of the data) are spooled —
up to ``SPOOL`` bytes in memory, the rest in a temporary file — and stored a
batch of ranges at a time. The hashing runs on a thread of its own (blake3,
hashlib, zstandard and file reads let go of the GIL), beside the pass's
decoding, hashing and compressing.
"""

from __future__ import annotations

import logging
import tempfile
from typing import IO

from django.db import transaction

from catalogue.models import FileStandard, RangeHashes, Version
from catalogue.stages import BackgroundWorker
from diskimage import BLOCK
from diskimage.datamap import DataMap
from diskimage.sparsedelta import HASH_BYTES, block_hashes

logger = logging.getLogger(__name__)

SPOOL = 8 << 20  # hashes held in memory before the spool goes to a temporary file
BATCH = 64  # ranges stored at once (4 MiB of hashes at most)


def blocks(length: int) -> int:
    """The blocks of a range of ``length`` bytes (the last may be short)."""
    return -(-length // BLOCK)


# --- Computing them in a pass ------------------------------------------------------------


class BlockHasher:
    """The block hashes of a version's data, fed as :class:`~diskimage.datamap.DataMapper`'s
    ``on_data`` feeds it: pieces of data with their offset in the image, in order.

    Pieces may split a block (the rest of it comes with the next piece); a piece
    that does not follow the last one starts a new run, the last one's short
    block (only the image's last block can be short) hashed as it is. The hashes
    come out of :meth:`finish` concatenated, in the order of the data: the hashes
    of the map's ranges, one after the other.
    """

    def __init__(self) -> None:
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL)  # noqa: SIM115 - closed by close()
        self._carry = b""  # the start of a block not complete yet
        self._end = -1  # the image offset after the last byte fed
        self._worker: BackgroundWorker[tuple[bytes | memoryview, int]] = BackgroundWorker(
            self._work, name="block-hashes"
        )
        self._finished = False

    def data(self, piece: bytes | bytearray | memoryview, offset: int) -> None:
        """Data at ``offset`` in the image (hashed later, on the thread: a piece of a buffer
        that will be read into again is copied)."""
        borrowed = isinstance(piece, memoryview) and not isinstance(piece.obj, bytes)
        if borrowed or isinstance(piece, bytearray):
            piece = bytes(piece)
        if piece:
            self._worker.put((piece, offset))

    def finish(self) -> IO[bytes]:
        """Every hash, concatenated, read from the start (the hasher's: closed with it)."""
        if not self._finished:
            self._worker.join()
            self._flush()
            self._finished = True
        self._spool.seek(0)
        return self._spool

    def close(self) -> None:
        self._worker.close()
        self._spool.close()

    def __enter__(self) -> BlockHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self, item: tuple[bytes | memoryview, int]) -> None:
        piece, offset = item
        view = memoryview(piece)
        if offset != self._end:
            self._flush()
        self._end = offset + len(view)
        if self._carry:
            head = min(len(view), BLOCK - len(self._carry))
            self._carry += bytes(view[:head])
            view = view[head:]
            if len(self._carry) < BLOCK:
                return
            self._flush()
        whole = len(view) // BLOCK * BLOCK
        if whole:
            self._spool.write(block_hashes(view[:whole]))
        self._carry = bytes(view[whole:])

    def _flush(self) -> None:
        if self._carry:
            self._spool.write(block_hashes(self._carry))
            self._carry = b""


class MappedFeed:
    """Hands a :class:`BlockHasher` the bytes of ``datamap``'s ranges out of the whole raw
    image, fed in order in pieces of any size (a pass that knows the map beforehand)."""

    def __init__(self, datamap: DataMap, hasher: BlockHasher) -> None:
        self._ranges = [(start, end) for start, end, _ in datamap.ranges]
        self._hasher = hasher
        self._index = 0
        self._position = 0

    def update(self, data: bytes) -> None:
        position, end = self._position, self._position + len(data)
        view = memoryview(data)
        while self._index < len(self._ranges):
            start, stop = self._ranges[self._index]
            if start >= end:
                break
            low, high = max(start, position), min(stop, end)
            if low < high:
                self._hasher.data(view[low - position : high - position], low)
            if stop > end:
                break
            self._index += 1
        self._position = end


def hashes_wanted(version: Version, datamap: DataMap | None) -> bool:
    """Whether a pass over ``version`` should hash its blocks: it is a raw image (a qcow2
    version has no deltas), its map (if known) has BLAKE3s to key them by, and they are
    not all kept yet."""
    if version.image.file_standard != FileStandard.RAW:
        return False
    if datamap is None:
        return True  # the pass makes the map
    return datamap.blake3 is not None and not hashes_kept(version, datamap)


def hashes_kept(version: Version, datamap: DataMap) -> bool:
    """Whether the hashes of every range of ``datamap`` are kept, for these very ranges."""
    if datamap.blake3 is None:
        return False
    kept = dict(RangeHashes.objects.filter(version=version).values_list("index", "blake3"))
    return all(kept.get(index) == fast for index, fast in enumerate(datamap.blake3))


def hashes_store(version: Version, datamap: DataMap, hashes: IO[bytes]) -> bool:
    """Keep ``hashes`` (a :class:`BlockHasher`'s, of bytes the caller checked are those of
    ``datamap``) as the version's, replacing what was kept; whether they were (not when
    the version is gone, or the hashes are not as many as the map's blocks)."""
    if datamap.blake3 is None:
        return False
    lengths = [blocks(end - start) * HASH_BYTES for start, end, _ in datamap.ranges]
    hashes.seek(0, 2)
    if hashes.tell() != sum(lengths):  # pragma: no cover - a pass that fed other bytes
        logger.warning(
            "Block hashes of version %s not kept: %d bytes for a map of %d",
            version.pk,
            hashes.tell(),
            sum(lengths),
        )
        return False
    hashes.seek(0)
    with transaction.atomic():
        # The row locked: the version is not deleted under us (its hashes would outlive it).
        if not Version.objects.select_for_update().filter(pk=version.pk).exists():
            return False
        RangeHashes.objects.filter(version=version).delete()
        for at in range(0, len(lengths), BATCH):
            RangeHashes.objects.bulk_create(
                [
                    RangeHashes(
                        version=version,
                        index=index,
                        blake3=datamap.blake3[index],
                        hashes=hashes.read(lengths[index]),
                    )
                    for index in range(at, min(len(lengths), at + BATCH))
                ],
                ignore_conflicts=True,  # a delta cached some meanwhile: of the same bytes
            )
    logger.info("Block hashes of version %s kept: %d ranges", version.pk, len(lengths))
    return True


# --- The cache, as a delta reads and fills it ------------------------------------------------


def cached_hashes(version: Version, datamap: DataMap, indices: list[int]) -> dict[int, bytes]:
    """The kept hashes of the map's ranges ``indices`` that are of these very ranges."""
    fast = datamap.blake3
    if fast is None:
        return {}
    found: dict[int, bytes] = {}
    for index, digest, hashes in RangeHashes.objects.filter(
        version=version, index__in=indices
    ).values_list("index", "blake3", "hashes"):
        start, end, _ = datamap.ranges[index]
        if digest == fast[index] and len(hashes) == blocks(end - start) * HASH_BYTES:
            found[index] = bytes(hashes)
    return found


def cache_hashes(version: Version, datamap: DataMap, found: dict[int, bytes]) -> None:
    """Keep ``found`` (hashes by range index, computed from the version's checked bytes)."""
    fast = datamap.blake3
    if fast is None or not found:  # a map without BLAKE3s cannot tell stale hashes: none kept
        return
    RangeHashes.objects.filter(version=version, index__in=list(found)).delete()
    RangeHashes.objects.bulk_create(
        [RangeHashes(version=version, index=i, blake3=fast[i], hashes=h) for i, h in found.items()],
        ignore_conflicts=True,  # another request cached them meanwhile
    )
