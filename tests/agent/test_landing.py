"""Landing a data stream: which hash decides a written range, and the two ways to the medium.

A range is written, read back from the medium and hashed: by the map's BLAKE3
when the map has it (the SHA-256 of record decides a mismatch), else by SHA-256.
Whole-block ranges go to the disk with ``O_DIRECT`` where the target takes it,
through the page cache (synced, then dropped) where it does not (tmpfs).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import pytest
from baas_agent import landing
from baas_agent.disks import allocate
from baas_agent.landing import land

from diskimage.datamap import DataMap
from diskimage.holes import data_extents
from tests.agent.conftest import MiB, make_image
from tests.diskimage.layouts import parsed
from tests.diskimage.pagecache import resident

WRONG = "0" * 64


def raw_stream(image: Path, datamap: DataMap) -> list[bytes]:
    """The data stream as raw ranges, in pieces of odd sizes."""
    raw = image.read_bytes()
    stream = b"".join(raw[start:end] for start, end, _ in datamap.ranges)
    return [stream[at : at + 65_537] for at in range(0, len(stream), 65_537)]


def with_digests(datamap: DataMap, *, sha256: str | None, blake3: str | None) -> DataMap:
    """``datamap`` with the first range's SHA-256 and BLAKE3 replaced (None: kept)."""
    start, end, digest = datamap.ranges[0]
    assert datamap.blake3 is not None
    return dataclasses.replace(
        datamap,
        ranges=((start, end, sha256 or digest), *datamap.ranges[1:]),
        blake3=(blake3 or datamap.blake3[0], *datamap.blake3[1:]),
    )


def test_a_written_range_is_verified_by_its_blake3_when_the_map_has_one(image, tmp_path):
    # The map's SHA-256 of the first range is wrong but its BLAKE3 right: the BLAKE3
    # of what was read back decides, and the range is good.
    datamap = with_digests(parsed(image), sha256=WRONG, blake3=None)
    target = tmp_path / "disk.img"
    assert land(raw_stream(image, datamap), "none", target, datamap, workers=2) is None
    assert target.read_bytes() == image.read_bytes()


def test_a_blake3_mismatch_is_decided_by_the_sha256_of_record(image, tmp_path):
    datamap = with_digests(parsed(image), sha256=None, blake3=WRONG)
    target = tmp_path / "disk.img"
    assert land(raw_stream(image, datamap), "none", target, datamap, workers=2) is None
    assert target.read_bytes() == image.read_bytes()


def test_a_range_whose_two_hashes_differ_is_never_reported_written(image, tmp_path):
    datamap = with_digests(parsed(image), sha256=WRONG, blake3=WRONG)
    start, end, _ = datamap.ranges[0]
    reason = land(raw_stream(image, datamap), "none", tmp_path / "disk.img", datamap, workers=2)
    assert reason == f"bytes {start}-{end} differ from the image (SHA-256 mismatch)"


def test_without_blake3_a_written_range_is_verified_by_sha256(image, tmp_path, monkeypatch):
    monkeypatch.setattr(landing, "blake3", None)  # an agent without the blake3 module
    monkeypatch.setattr(DataMap, "can_check_fast", lambda self: False)
    datamap = with_digests(parsed(image), sha256=WRONG, blake3=None)
    reason = land(raw_stream(image, datamap), "none", tmp_path / "disk.img", datamap, workers=2)
    assert reason is not None and "SHA-256 mismatch" in reason


def test_what_goes_direct_to_the_disk_is_never_cached(image, tmp_path):
    if os.major(os.stat(tmp_path).st_dev) == 0:
        pytest.skip("the temporary directory is not on a block device (tmpfs)")
    datamap = parsed(image)
    target = tmp_path / "disk.img"
    assert land(raw_stream(image, datamap), "none", target, datamap, workers=2) is None
    assert resident(target) == 0
    assert target.read_bytes() == image.read_bytes()


def test_a_target_that_refuses_o_direct_is_landed_through_the_page_cache(
    image, tmp_path, monkeypatch
):
    # As a file system without O_DIRECT (tmpfs before Linux 6.6) answers: EINVAL.
    real_open = os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    datamap = parsed(image)
    target = tmp_path / "disk.img"
    assert land(raw_stream(image, datamap), "none", target, datamap, workers=2) is None
    monkeypatch.undo()
    if os.major(os.stat(tmp_path).st_dev) != 0:
        assert resident(target) == 0  # synced and dropped once read back, all the same
    assert target.read_bytes() == image.read_bytes()


def test_an_image_that_ends_inside_a_block_is_landed(tmp_path):
    # Its last range is no whole number of blocks: it goes through the page cache.
    image = tmp_path / "odd.img"
    size = 5 * MiB + 1000
    make_image(image, size, [(0, 70_000), (2 * MiB + 4096, MiB), (size - 700, 700)])
    datamap = parsed(image)
    assert datamap.ranges[-1][1] == size and size % 4096
    target = tmp_path / "disk.img"
    assert land(raw_stream(image, datamap), "none", target, datamap, workers=2) is None
    assert target.read_bytes() == image.read_bytes()


def test_what_is_hashed_is_what_the_disk_holds_not_what_was_written(image, tmp_path, monkeypatch):
    # A range is read back into the buffer it was written from: a disk that stored other
    # bytes than it was given must fail the range, however right the buffer was.
    real_pwrite = os.pwrite
    datamap = parsed(image)
    start, end, _ = datamap.ranges[1]

    def flipping(fd, data, offset):
        view = memoryview(data)
        if offset <= start + 100 < offset + len(view):
            changed = bytearray(view)
            changed[start + 100 - offset] ^= 1
            return real_pwrite(fd, changed, offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", flipping)
    reason = land(raw_stream(image, datamap), "none", tmp_path / "disk.img", datamap, workers=2)
    assert reason == f"bytes {start}-{end} differ from the image (SHA-256 mismatch)"


def test_a_file_target_gets_its_ranges_allocated_and_its_gaps_left_holes(image, tmp_path):
    datamap = parsed(image)
    target = tmp_path / "disk.img"
    assert land(raw_stream(image, datamap), "none", target, datamap, workers=2) is None
    with target.open("rb") as file:
        assert list(data_extents(file.fileno(), 0, datamap.size)) == [
            (start, end) for start, end in merged(datamap)
        ]
    assert target.read_bytes() == image.read_bytes()


def merged(datamap: DataMap) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for start, end, _ in datamap.ranges:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def test_allocate_allocates_unwritten_blocks_that_read_as_zeros(tmp_path):
    target = tmp_path / "disk.img"
    with target.open("wb") as file:
        file.truncate(8 * MiB)
        assert allocate(file.fileno(), [(MiB, 2 * MiB), (5 * MiB, 5 * MiB + 4096)])
    if os.major(os.stat(tmp_path).st_dev) != 0:  # tmpfs reports no holes
        with target.open("rb") as file:
            assert list(data_extents(file.fileno(), 0, 8 * MiB)) in (
                [],  # unwritten extents are holes to SEEK_DATA on some file systems
                [(MiB, 2 * MiB), (5 * MiB, 5 * MiB + 4096)],
            )
    assert target.stat().st_blocks * 512 >= MiB + 4096
    assert target.read_bytes() == bytes(8 * MiB)
