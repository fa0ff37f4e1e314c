"""The byte level of shared versions on a real XFS (reflink=1) and ext4: whichever ranges
change, each file reads back its own bytes, the unchanged ranges are shared (raw: every
unchanged 64 KiB piece; zstd: every unchanged range's frame), and unlinking either file
leaves the other byte-identical. zstd files in aligned frames still decode with ``zstd -d``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalogue.storage import LocalStorage
from diskimage import BLOCK
from diskimage.datamap import DataMap, DataMapper
from diskimage.extents import clone_range, dedupe_candidates, dedupe_range, held_bytes
from diskimage.seekable import FramedZstdEncoder, data_frames, read_seek_table
from diskimage.sharing import raw_candidates, zstd_candidates
from tests.catalogue.reflinkfs import (
    common_bytes,
    fresh_dir,
    mounted,
    unshared,
)

pytestmark = pytest.mark.root

MiB = 1 << 20
RANGES = 12  # data runs of the test disk, each 256 KiB to 2 MiB, with zeros between


@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    yield from mounted(tmp_path_factory.mktemp("xfs"), "xfs")


@pytest.fixture(scope="module")
def ext4(tmp_path_factory):
    yield from mounted(tmp_path_factory.mktemp("ext4"), "ext4")


def layout(seed: int) -> bytearray:
    """A disk of RANGES data runs (text-like, so zstd compresses it) and zeros between."""
    content = bytearray()
    for index in range(RANGES):
        content += bytes(((index * 7 + seed) % 5 + 1) * BLOCK)
        length = (64 + (index * 37 + seed) % 448) * BLOCK
        line = b"run %d line of the disk %d\n" % (index, seed)
        content += (line * (length // len(line) + 1))[:length]
    content += bytes(3 * BLOCK)
    return content


def mapped(content: bytes) -> DataMap:
    mapper = DataMapper()
    mapper.update(content)
    return mapper.finish(hashlib.sha256(content).hexdigest())


def store(directory: Path, name: str, content: bytes, compression: str) -> tuple[Path, DataMap]:
    path = directory / name
    datamap = mapped(content)
    if compression == "zstd":
        encoder = FramedZstdEncoder(datamap, 3)
        path.write_bytes(encoder.compress(content) + encoder.flush())
    else:
        storage = LocalStorage(directory)
        image = uuid.uuid4()
        with storage.open_write(image) as pending:
            pending.write(content)
            stored = pending.commit(0)
        os.rename(stored.path, path)
    return path, datamap


def read_back(path: Path, compression: str) -> bytes:
    if compression == "zstd":
        return subprocess.run(["zstd", "-dcq", path], capture_output=True, check=True).stdout
    return path.read_bytes()


def share(old: Path, old_map: DataMap, new: Path, new_map: DataMap, compression: str) -> int:
    with old.open("rb") as src, new.open("rb") as dst:
        if compression == "zstd":
            candidates = zstd_candidates(
                old_map, read_seek_table(src.fileno()), new_map, read_seek_table(dst.fileno())
            )
        else:
            candidates = raw_candidates(old_map, new_map)
        return dedupe_candidates(src.fileno(), dst.fileno(), candidates)


changes = st.lists(
    st.tuples(st.integers(0, RANGES - 1), st.floats(0, 1), st.integers(1, 40)),
    max_size=6,
)


@pytest.mark.parametrize("compression", ["none", "zstd"])
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changed=changes)
def test_whatever_changes_each_file_keeps_its_bytes_and_the_rest_is_shared(
    xfs, compression, changed
):
    directory = fresh_dir(xfs)
    first = layout(1)
    second = bytearray(first)
    old_map = mapped(bytes(first))
    touched = set()
    for index, where, blocks in changed:  # rewrite blocks inside data range ``index``
        start, end, _ = old_map.ranges[min(index, len(old_map.ranges) - 1)]
        offset = start + int(where * (end - start - BLOCK)) // BLOCK * BLOCK
        stop = min(end, offset + blocks * BLOCK)
        second[offset:stop] = os.urandom(stop - offset)
        touched.add((start, end))
    old, old_map = store(directory, "1.img", bytes(first), compression)
    new, new_map = store(directory, "2.img", bytes(second), compression)

    share(old, old_map, new, new_map, compression)
    assert share(old, old_map, new, new_map, compression) >= 0  # again: harmless

    assert read_back(new, compression) == bytes(second)
    assert read_back(old, compression) == bytes(first)
    common = common_bytes(old, new)
    if compression == "none":
        changed_bytes = sum(blocks * BLOCK for _, _, blocks in changed)
        # Every unchanged 64 KiB piece is shared: each change unshares at most two pieces.
        assert common >= old_map.data_bytes - len(changed) * 2 * 64 * 1024 - changed_bytes
    else:
        with new.open("rb") as file:
            frames = data_frames(read_seek_table(file.fileno()), new_map)
        kept = [
            frame.length // BLOCK * BLOCK
            for frame, (start, end, _) in zip(frames, new_map.ranges, strict=True)
            if (start, end) not in touched
        ]
        assert common >= sum(kept)
    with old.open("rb") as a, new.open("rb") as b:
        allocated = sum(os.fstat(f.fileno()).st_blocks * 512 for f in (a, b))
        assert held_bytes([a.fileno(), b.fileno()]) <= allocated - common

    old.unlink()
    assert read_back(new, compression) == bytes(second)
    assert unshared(new)


def test_aligned_zstd_frames_start_and_end_on_blocks_and_decode_as_before(tmp_path):
    content = bytes(layout(3))
    datamap = mapped(content)
    path = tmp_path / "v.img.zst"
    encoder = FramedZstdEncoder(datamap, 3)
    path.write_bytes(encoder.compress(content) + encoder.flush())
    with path.open("rb") as file:
        frames = read_seek_table(file.fileno())
    chosen = data_frames(frames, datamap)
    assert len(chosen) == len(datamap.ranges) == RANGES
    for frame in chosen:
        assert frame.offset % BLOCK == 0
        end = frame.offset + frame.length
        after = [f for f in frames if f.offset == end]
        assert end % BLOCK == 0 or (after and after[0].size == 0)
    assert read_back(path, "zstd") == content
    packed = FramedZstdEncoder(datamap, 3, align=0)
    assert len(packed.compress(content) + packed.flush()) < path.stat().st_size


def test_a_pending_file_composed_from_an_older_version_shares_its_blocks(xfs):
    directory = fresh_dir(xfs)
    base = bytes(layout(5))
    old, _ = store(directory, "1.img", base, "none")
    storage = LocalStorage(directory)
    with old.open("rb") as source, storage.open_write(uuid.uuid4()) as pending:
        assert pending.share_from(source, 0, 4 * MiB) == 4 * MiB
        pending.write_at(b"new data".ljust(BLOCK, b"!"), 4 * MiB)
        pending.extend_to(len(base))
        stored = pending.commit(7)
    composed = stored.path.read_bytes()
    assert composed[: 4 * MiB] == base[: 4 * MiB]
    assert composed[4 * MiB : 4 * MiB + 8] == b"new data"
    assert common_bytes(old, stored.path) >= 3 * MiB  # its data blocks, not the zeros'


def test_on_ext4_nothing_is_shared_and_the_bytes_are_copied(ext4):
    directory = fresh_dir(ext4)
    base = bytes(layout(6))
    old, old_map = store(directory, "1.img", base, "none")
    new, new_map = store(directory, "2.img", base, "none")
    assert share(old, old_map, new, new_map, "none") == 0
    with old.open("rb") as src, open(directory / "3.img", "wb") as dst:
        assert clone_range(src.fileno(), 0, dst.fileno(), 0, 2 * MiB) == 0  # copied
        assert dedupe_range(src.fileno(), 0, dst.fileno(), 0, MiB) is None
    assert (directory / "3.img").read_bytes() == base[: 2 * MiB]
    assert read_back(new, "none") == base and common_bytes(old, new) == 0
