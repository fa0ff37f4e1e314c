"""Checking a disk against a data map: every range hashed, every gap read as zeros."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskimage import datamap as datamap_module
from diskimage.datamap import DataMap
from diskimage.verify import mismatch
from tests.diskimage.faultydisk import faulty_disk
from tests.diskimage.layouts import MiB, map_of, parsed, sample_image


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return sample_image(tmp_path)


def test_a_copy_of_the_image_matches_its_map(image, tmp_path):
    copy = tmp_path / "copy.img"
    copy.write_bytes(image.read_bytes())  # no holes at all: the gaps are read and found zero
    datamap = parsed(image)
    assert datamap.ranges and datamap.data_bytes < image.stat().st_size // 2
    progress: list[int] = []
    assert mismatch(image, datamap, progress=progress.append) is None
    assert mismatch(copy, datamap, sparse=False, workers=1) is None
    assert progress[-1] == image.stat().st_size


def test_one_changed_byte_in_the_data_is_found(image, tmp_path):
    datamap = parsed(image)
    changed = bytearray(image.read_bytes())
    changed[9 * MiB + 100] ^= 0xFF
    copy = tmp_path / "copy.img"
    copy.write_bytes(changed)
    assert "SHA-256 mismatch" in mismatch(copy, datamap)


@pytest.mark.parametrize("sparse", [True, False])
def test_data_where_the_image_has_zeros_is_found(image, tmp_path, sparse):
    datamap = parsed(image)
    copy = tmp_path / "copy.img"
    copy.write_bytes(image.read_bytes())
    with copy.open("r+b") as file:
        file.seek(12 * MiB + 5)  # inside the hole between 9 MiB and 15 MiB
        file.write(b"\x01")
    assert "should be zeros" in mismatch(copy, datamap, sparse=sparse)


def test_a_short_or_missing_disk_does_not_match(image, tmp_path):
    datamap = parsed(image)
    short = tmp_path / "short.img"
    short.write_bytes(image.read_bytes()[: 8 * MiB])
    assert "fewer than" in mismatch(short, datamap)
    assert "does not exist" in mismatch(tmp_path / "nothing.img", datamap)


@pytest.mark.parametrize(
    "change",
    [
        {"format": "bmap"},
        {"size": 1},
        {"sha256": "0" * 64},
        {"block_size": 512},
        {"ranges": [[4096, 0, "0" * 64]]},
        {"ranges": [[1, 4096, "0" * 64]]},
        {"ranges": [[0, 8192, "0" * 64], [4096, 12288, "0" * 64]]},
        {"ranges": [[0, 4096, "not hex"]]},
        {"ranges": [[0, 17 * MiB, "0" * 64]]},
    ],
)
def test_a_malformed_map_or_one_of_other_bytes_is_refused(image, change):
    data = map_of(image)
    size, sha256 = data["size"], data["sha256"]
    with pytest.raises(ValueError):
        DataMap.from_json({**data, **change}, size=size, sha256=sha256)


def test_the_fast_check_finds_a_changed_byte_by_blake3(image, tmp_path):
    datamap = parsed(image)
    assert datamap.blake3 is not None and datamap.can_check_fast()
    changed = bytearray(image.read_bytes())
    changed[15 * MiB + 3] ^= 1
    copy = tmp_path / "copy.img"
    copy.write_bytes(changed)
    assert "BLAKE3 mismatch" in mismatch(copy, datamap, fast=True)
    assert mismatch(image, datamap, fast=True) is None


def test_without_the_blake3_module_the_fast_check_is_sha256(image, tmp_path, monkeypatch):
    monkeypatch.setattr(datamap_module, "blake3_module", None)
    datamap = parsed(image)
    copy = tmp_path / "copy.img"
    changed = bytearray(image.read_bytes())
    changed[0] ^= 1
    copy.write_bytes(changed)
    assert not datamap.can_check_fast()
    assert "SHA-256 mismatch" in mismatch(copy, datamap, fast=True)


@pytest.mark.root
@pytest.mark.parametrize("fast", [True, False], ids=["BLAKE3", "SHA-256"])
def test_a_disk_that_cannot_read_a_sector_is_reported_with_where_and_why(tmp_path, fast):
    backing = sample_image(tmp_path)  # data from 0 to 3 MiB + 4 KiB
    datamap = parsed(backing)
    with faulty_disk(tmp_path, backing, bad=(2 * MiB, 2 * MiB + 512)) as disk:
        reason = mismatch(disk, datamap, fast=fast)
    assert reason is not None and reason.startswith("reading bytes "), reason
    start, end = (int(n) for n in reason.split()[2].split("-"))
    assert start <= 2 * MiB < end  # the range that holds the bad sector
    assert reason.endswith("failed: Input/output error (errno 5)")


@pytest.mark.root
def test_the_same_disk_served_without_a_bad_sector_holds_the_image(tmp_path):
    backing = sample_image(tmp_path)
    with faulty_disk(tmp_path, backing, bad=(0, 0)) as disk:
        assert mismatch(disk, parsed(backing), fast=True) is None
