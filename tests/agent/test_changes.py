"""Finding a disk's changes against its base and composing them back (diskimage.changes, .delta).

The property: whatever the changes, composing the base's bytes with the delta
gives the disk, byte for byte, and the delta carries the changed blocks only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskimage import BLOCK
from diskimage.changes import changed_runs, disk_map, merged, suspects
from diskimage.datamap import RANGE_MAX, DataMap, DataMapper
from diskimage.sparse import CHUNK_HEADER, CRC32, HEADER, MAGIC, RAW
from diskimage.sparsedelta import (
    DeltaComposer,
    DeltaError,
    Run,
    block_hashes,
    delta_length,
    delta_stream,
    map_digest,
)

BLOCKS = 96  # a small disk: 384 KiB


def mapped(data: bytes) -> DataMap:
    mapper = DataMapper(sha256=False)
    mapper.update(data)
    return mapper.finish("")


def base_hashes(base: bytes, datamap: DataMap, indices) -> dict[int, bytes]:
    return {i: block_hashes(base[s:e]) for i in indices for s, e, _ in [datamap.ranges[i]]}


def compose(base: bytes, datamap: DataMap, delta: bytes, *, piece: int = 7919) -> bytes:
    out = bytearray()
    composer = DeltaComposer(
        size=len(base),
        ranges=[(s, e) for s, e, _ in datamap.ranges],
        read=lambda s, e: base[s:e],
        out=out.extend,
    )
    for at in range(0, len(delta), piece):
        composer.write(delta[at : at + piece])
    composer.finish()
    return bytes(out)


def delta_of(tmp_path: Path, base: bytes, disk: bytes, *, with_hashes: bool = True):
    """The delta an agent sends for ``disk`` flashed with ``base``, and its runs."""
    path = tmp_path / "disk.img"
    path.write_bytes(disk)
    base_map = mapped(base)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = disk_map(fd, len(disk), sparse=True)
        suspect = suspects(base_map, found)
        hashes = base_hashes(base, base_map, suspect) if with_hashes else {}
        runs = changed_runs(fd, base_map, found, suspect, hashes)
        delta = b"".join(delta_stream(runs, len(disk), lambda s, e: disk[s:e]))
    finally:
        os.close(fd)
    assert len(delta) == delta_length(runs, len(disk))
    assert found == mapped(disk)  # the map the server will compute of the result
    return base_map, runs, delta


def differing_blocks(base: bytes, disk: bytes) -> int:
    return sum(base[at : at + BLOCK] != disk[at : at + BLOCK] for at in range(0, len(base), BLOCK))


def seeded_block(seed: int) -> bytes:
    """A block of pseudo-random bytes (a few with long runs of zeros inside)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)
    return block if seed % 5 else bytes(BLOCK - 32) + block[:32]


block_contents = st.one_of(st.just(bytes(BLOCK)), st.integers(0, 50).map(seeded_block))
images = st.lists(block_contents, min_size=BLOCKS, max_size=BLOCKS).map(b"".join)
edits = st.lists(
    st.tuples(st.integers(0, BLOCKS - 1), st.integers(1, 6), block_contents), max_size=8
)


def edited(base: bytes, changes) -> bytes:
    disk = bytearray(base)
    for first, count, content in changes:
        for block in range(first, min(BLOCKS, first + count)):
            disk[block * BLOCK : (block + 1) * BLOCK] = content
    return bytes(disk)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base=images, changes=edits, with_hashes=st.booleans())
def test_base_plus_delta_is_the_disk_and_only_changed_blocks_travel(
    tmp_path, base, changes, with_hashes
):
    disk = edited(base, changes)
    base_map, runs, delta = delta_of(tmp_path, base, disk, with_hashes=with_hashes)
    assert compose(base, base_map, delta) == disk
    carried = sum(run.length for run in runs if not run.zeros)
    if with_hashes:  # exactly the blocks that differ (zeros cost a FILL chunk, not a block)
        assert sum(run.length for run in runs) == differing_blocks(base, disk) * BLOCK
    assert len(delta) <= HEADER.size + carried + (2 * len(runs) + 1) * (CHUNK_HEADER.size + 4)


def test_an_unchanged_disk_has_the_base_s_map_and_no_runs(tmp_path):
    base = os.urandom(8 * BLOCK) + bytes(8 * BLOCK) + os.urandom(3 * BLOCK) + bytes(BLOCK)
    base_map, runs, delta = delta_of(tmp_path, base, base)
    assert runs == []
    assert map_digest(mapped(base)) == map_digest(base_map)
    assert compose(base, base_map, delta) == base


def test_a_change_in_a_large_range_sends_only_its_block(tmp_path):
    base = os.urandom(RANGE_MAX + 64 * BLOCK)
    disk = bytearray(base)
    disk[RANGE_MAX + 5 * BLOCK + 17] ^= 0xFF
    base_map, runs, delta = delta_of(tmp_path, base, bytes(disk))
    assert runs == [Run(RANGE_MAX + 5 * BLOCK, RANGE_MAX + 6 * BLOCK)]
    assert len(delta) < 2 * BLOCK
    assert compose(base, base_map, delta) == disk


def test_a_delta_of_another_size_is_refused_at_its_header():
    base = os.urandom(4 * BLOCK)
    delta = b"".join(delta_stream([], 8 * BLOCK, lambda s, e: b""))
    with pytest.raises(DeltaError, match="32768 bytes, but its base holds 16384"):
        compose(base, mapped(base), delta)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-5],  # cut short
        lambda d: d[:40] + b"\xff" * 8 + d[48:],  # a chunk header damaged
        lambda d: b"not a sparse image" + d[18:],
        lambda d: b"",
    ],
)
def test_an_ill_formed_delta_is_refused(mangle):
    base = os.urandom(4 * BLOCK)
    delta = b"".join(delta_stream([Run(BLOCK, 2 * BLOCK)], 4 * BLOCK, lambda s, e: bytes(e - s)))
    with pytest.raises(DeltaError):
        compose(base, mapped(base), mangle(delta))


def test_a_crc_chunk_is_refused():
    base = os.urandom(4 * BLOCK)
    delta = HEADER.pack(MAGIC, 1, 0, HEADER.size, CHUNK_HEADER.size, BLOCK, 4, 2, 0)
    delta += CHUNK_HEADER.pack(RAW, 0, 4, CHUNK_HEADER.size + 4 * BLOCK) + bytes(4 * BLOCK)
    delta += CHUNK_HEADER.pack(CRC32, 0, 0, CHUNK_HEADER.size + 4) + bytes(4)
    with pytest.raises(DeltaError, match="CRC-32"):
        compose(base, mapped(base), delta)


def test_runs_merge_with_neighbours_of_their_kind_only():
    runs = merged([Run(8192, 12288), Run(0, 4096), Run(4096, 8192, zeros=True), Run(12288, 16384)])
    assert runs == [Run(0, 4096), Run(4096, 8192, zeros=True), Run(8192, 16384)]
