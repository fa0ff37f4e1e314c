"""A version's stored bytes by range: what a delta upload composes from, block hashes, and
which blocks of a range differ between two versions (:func:`blocks_changed`, for a delta
re-flash).

:class:`VersionBytes` reads ``[start, end)`` inside the data ranges of a
version's map, whatever the version's storage, moving forward through the
image: a raw file range by range (``pread``); a zstd file in frames of its
map (``diskimage.seekable``) by decoding the one frame that holds the range;
any other stored form (gzip, zstd not yet laid out in frames) by decoding the
stored file as a stream, forward only. Every byte outside the ranges is zero
and is never read. A whole range, read or decoded ahead on threads, is
checked against the map's BLAKE3 before any of it is handed out: a stored
file that no longer holds what its map says raises :class:`StoredMismatch`
instead of passing its damage on to a new version. The file is opened once:
a compression job that swaps it meanwhile does not disturb the reader.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import blake3
import zstandard

from catalogue.models import Compression, FileStandard, Version
from catalogue.services.codecs import raw_reader
from catalogue.services.delivery import open_stored
from catalogue.services.rangehashes import blocks, cache_hashes, cached_hashes
from diskimage import BLOCK
from diskimage.datamap import RANGE_MAX, DataMap
from diskimage.seekable import Frame, data_frames, read_seek_table
from diskimage.sparsedelta import HASH_BYTES, block_hashes, hashes_digest

READ = 1 << 20
# Ranges read (or frames decoded) and checked ahead, on threads (zstandard and blake3 let go
# of the GIL): a composed version reads every range of its base in order.
AHEAD = 3
COMPARE = 64 << 10  # bytes whose hashes are compared at once before block by block
HASH_BATCH = 32  # ranges whose block hashes are in memory at once (2 MiB at most)


class StoredMismatch(Exception):
    """A range of the stored file does not hash to what the version's map says."""


class VersionBytes:
    """Reads a version's data by range, forward (see the module). Use it as a context manager."""

    def __init__(
        self,
        version: Version,
        datamap: DataMap,
        *,
        order: list[int] | None = None,
        check: bool = True,
    ) -> None:
        """``order``: the indices of the ranges that will be read, in order (all by default):
        the frames decoded ahead follow it. ``check=False`` skips the BLAKE3 of each range
        (a frame that does not decode, or decodes short, still raises): only for a reader
        whose result is checked otherwise, as a composed version is against its map."""
        self.version = version
        self._check = check
        self._order = list(range(len(datamap.ranges))) if order is None else order
        self._place = {index: at for at, index in enumerate(self._order)}
        self.datamap = datamap
        self.starts = [start for start, _, _ in datamap.ranges]
        self.file: BinaryIO = open_stored(version)
        self.compression = version.stored_compression
        self.frames: list[Frame] | None = None
        self._frame: tuple[int, bytes] | None = None  # the range index decoded last, its bytes
        self._ahead: dict[int, Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._stream: BinaryIO | None = None
        self._position = 0  # of the stream, in the raw image
        if self.compression == Compression.ZSTD:
            table = read_seek_table(self.file.fileno())
            self.frames = data_frames(table, datamap) if table is not None else None
        if self.compression != Compression.NONE and self.frames is None:
            self._stream = raw_reader(self.file, self.compression, limit=version.size)

    def __enter__(self) -> VersionBytes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            for future in self._ahead.values():
                future.cancel()
            self._pool.shutdown(wait=True)
        if self._stream is not None:
            self._stream.close()
        self.file.close()

    def read(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)``, inside one range of the map; asked for in order."""
        if self._stream is None:
            return self._from_range(start, end)
        return self._from_stream(start, end)

    def _from_range(self, start: int, end: int) -> bytes:
        index = bisect_right(self.starts, start) - 1
        if self._frame is None or self._frame[0] != index:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(AHEAD, os.cpu_count() or 1), thread_name_prefix="frames"
                )
            at = self._place.get(index, 0)
            for later in [index, *self._order[at + 1 : at + AHEAD]]:
                if later not in self._ahead:
                    self._ahead[later] = self._pool.submit(self._load, later)
            for done in [i for i in self._ahead if i < index]:  # skipped: not needed
                self._ahead.pop(done).cancel()
            self._frame = (index, self._ahead.pop(index).result())
        first = self.datamap.ranges[index][0]
        return self._frame[1][start - first : end - first]

    def _load(self, index: int) -> bytes:
        """Range ``index`` whole (read, or its frame decoded), checked against the map."""
        start, end, _ = self.datamap.ranges[index]
        if self.frames is None:
            data = os.pread(self.file.fileno(), end - start, start)
        else:
            frame = self.frames[index]
            compressed = os.pread(self.file.fileno(), frame.length, frame.offset)
            try:
                data = zstandard.ZstdDecompressor().decompress(
                    compressed, max_output_size=RANGE_MAX
                )
            except zstandard.ZstdError as exc:
                raise StoredMismatch(
                    f"the frame of bytes {start}-{end} of version {self.version.number}'s "
                    f"stored file does not decode ({exc})"
                ) from exc
        expected = self.datamap.blake3[index] if self._check and self.datamap.blake3 else None
        if len(data) != end - start or (
            expected is not None and blake3.blake3(data).hexdigest() != expected
        ):
            raise StoredMismatch(
                f"bytes {start}-{end} of version {self.version.number}'s stored file are not "
                "those of its data map"
            )
        return data

    def _from_stream(self, start: int, end: int) -> bytes:
        assert self._stream is not None
        if start < self._position:
            raise ValueError("a stored stream is read forward only")
        while self._position < start:
            skipped = len(self._stream.read(min(READ, start - self._position)))
            if not skipped:
                raise OSError(f"the stored file of version {self.version.pk} ends early")
            self._position += skipped
        data = self._stream.read(end - start)
        while len(data) < end - start and (more := self._stream.read(end - start - len(data))):
            data += more
        if len(data) != end - start:
            raise OSError(f"the stored file of version {self.version.pk} ends early")
        self._position = end
        return data


def version_bytes_check(version: Version, datamap: DataMap) -> None:
    """Read every range of the version's stored file against its map: StoredMismatch if not."""
    with VersionBytes(version, datamap) as source:
        for start, end, _ in datamap.ranges:
            for at in range(start, end, RANGE_MAX):
                source.read(at, min(end, at + RANGE_MAX))


def block_hashes_of(version: Version, datamap: DataMap, indices: list[int]) -> Iterator[bytes]:
    """The block hashes (``diskimage.sparsedelta.block_hashes``) of the map's ranges ``indices``
    (increasing), range after range: cached ones as they are, the others read from the
    stored file (and cached), a few ranges at a time."""
    for at in range(0, len(indices), HASH_BATCH):
        batch = indices[at : at + HASH_BATCH]
        found = range_hashes(version, datamap, batch)
        for index in batch:
            yield found[index]


def range_hashes(version: Version, datamap: DataMap, indices: list[int]) -> dict[int, bytes]:
    """The block hashes of the map's ranges ``indices`` (increasing), by index: kept since the
    version was stored (``rangehashes``) where they are of these very ranges, else — a
    version stored before they were kept — computed from the stored file, each range
    checked against the map on its way (:class:`StoredMismatch`), and kept."""
    found = cached_hashes(version, datamap, indices)
    missing = [index for index in indices if index not in found]
    if not missing:
        return found
    computed: dict[int, bytes] = {}
    with VersionBytes(version, datamap, order=missing) as source:
        for index in missing:
            start, end, _ = datamap.ranges[index]
            computed[index] = b"".join(
                block_hashes(source.read(at, min(end, at + RANGE_MAX)))
                for at in range(start, end, RANGE_MAX)
            )
    cache_hashes(version, datamap, computed)
    return found | computed


def blocks_changed(
    *, base: Version, base_map: DataMap, new: Version, new_map: DataMap, indices: list[int]
) -> Iterator[tuple[int, list[tuple[int, int, str]]]]:
    """For each of ``new_map``'s ranges ``indices`` (increasing), the runs of it whose bytes
    differ from what a disk holding ``base`` holds there: ``(index, [(start, end, digest)])``,
    image offsets on BLOCKs (a run may end at the range's end), ``digest`` being
    :func:`~diskimage.sparsedelta.hashes_digest` of the new blocks' hashes.

    Compared by the two versions' block hashes (:func:`range_hashes`); where the base
    holds zeros, by the hash of a zero block. Nothing for a qcow2 version (what it
    writes is its rendition's bytes, not its stored file's).
    """
    if FileStandard.QCOW2 in (base.image.file_standard, new.image.file_standard):
        return
    base_starts = [start for start, _, _ in base_map.ranges]
    wanted = [_overlapping(base_map, base_starts, *new_map.ranges[i][:2]) for i in indices]
    new_hashes = range_hashes(new, new_map, indices)
    base_hashes = range_hashes(base, base_map, sorted({i for found in wanted for i in found}))
    zero = block_hashes(bytes(BLOCK))
    for index, overlapping in zip(indices, wanted, strict=True):
        start, end, _ = new_map.ranges[index]
        held = bytearray(zero * blocks(end - start))
        for other in overlapping:  # block-aligned both: the base's hashes drop in place
            other_start, other_end, _ = base_map.ranges[other]
            low, high = max(start, other_start), min(end, other_end)
            piece = base_hashes[other][
                (low - other_start) // BLOCK * HASH_BYTES : blocks(high - other_start) * HASH_BYTES
            ]
            at = (low - start) // BLOCK * HASH_BYTES
            held[at : at + len(piece)] = piece
        yield index, _differing(new_hashes[index], bytes(held), start, end)


def _overlapping(datamap: DataMap, starts: list[int], start: int, end: int) -> list[int]:
    """Indices of ``datamap``'s ranges that overlap ``[start, end)``."""
    index = max(0, bisect_right(starts, start) - 1)
    found = []
    while index < len(starts) and starts[index] < end:
        if datamap.ranges[index][1] > start:
            found.append(index)
        index += 1
    return found


def _differing(new: bytes, held: bytes, start: int, end: int) -> list[tuple[int, int, str]]:
    """The runs of blocks whose hashes differ, at ``start`` in the image, each with the digest
    of its new hashes. Compared a coarse step at a time, then block by block."""
    runs: list[tuple[int, int]] = []  # in blocks
    step = COMPARE // BLOCK * HASH_BYTES
    for coarse in range(0, len(new), step):
        if new[coarse : coarse + step] == held[coarse : coarse + step]:
            continue
        for at in range(coarse, min(len(new), coarse + step), HASH_BYTES):
            if new[at : at + HASH_BYTES] == held[at : at + HASH_BYTES]:
                continue
            block = at // HASH_BYTES
            if runs and runs[-1][1] == block:
                runs[-1] = (runs[-1][0], block + 1)
            else:
                runs.append((block, block + 1))
    return [
        (
            start + low * BLOCK,
            min(end, start + high * BLOCK),
            hashes_digest(new[low * HASH_BYTES : high * HASH_BYTES]),
        )
        for low, high in runs
    ]
