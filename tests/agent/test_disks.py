"""The device map, zero detection, the sparse writer and the fast hasher."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from baas_agent import disks
from baas_agent.disks import (
    BLOCK,
    DiskError,
    DiskMap,
    SparseWriter,
    hash_target,
    read_target,
)

from tests.agent.conftest import MiB, allocated, data_extents, fill_with_garbage, make_image


def chunks_of(path: Path, size: int = MiB):
    with path.open("rb") as file:
        while chunk := file.read(size):
            yield chunk


def write_image(source: Path, target: Path, **kwargs) -> SparseWriter:
    writer = SparseWriter(target, source.stat().st_size, **kwargs)
    with writer:
        for chunk in chunks_of(source):
            writer.write(chunk)
        writer.close()
    return writer


def test_a_disk_map_sends_devices_to_their_targets():
    disks_ = DiskMap.parse(["/dev/sda=/tmp/a.img", "/dev/sdb=/tmp/b.img"])
    assert disks_.target("/dev/sda") == Path("/tmp/a.img")
    assert disks_.target("/dev/sdb") == Path("/tmp/b.img")


def test_with_mappings_an_unmapped_device_is_refused():
    with pytest.raises(DiskError, match="not one of the mapped disks"):
        DiskMap.parse(["/dev/sda=/tmp/a.img"]).target("/dev/sdc")


def test_without_mappings_a_device_is_its_own_target():
    assert DiskMap().target("/dev/nvme0n1") == Path("/dev/nvme0n1")
    with pytest.raises(DiskError):
        DiskMap().target("sda")
    with pytest.raises(ValueError, match="DEVICE=TARGET"):
        DiskMap.parse(["/dev/sda"])


def test_the_sparse_writer_gives_identical_bytes_with_only_data_allocated(tmp_path, image):
    target = tmp_path / "disk.img"
    write_image(image, target)
    assert target.read_bytes() == image.read_bytes()
    data = 3 * MiB + 4096 + 3 * BLOCK + 8192 + MiB  # the extents, rounded out to blocks
    assert allocated(target) <= data + 64 * 1024


def test_a_target_full_of_other_data_ends_up_identical_with_holes_where_the_image_has_zeros(
    tmp_path, image
):
    target = tmp_path / "disk.img"
    fill_with_garbage(target, 24 * MiB)  # longer than the image, too
    write_image(image, target)
    assert target.stat().st_size == image.stat().st_size
    assert target.read_bytes() == image.read_bytes()
    assert data_extents(target) == data_extents(image)


def test_block_device_mode_zeroes_old_data_by_punching_holes(tmp_path, image):
    target = tmp_path / "device.img"
    fill_with_garbage(target, 16 * MiB)
    writer = write_image(image, target, block_device=True)
    assert writer.zeroer is not None and writer.zeroer.method == "punch_hole"
    assert target.read_bytes() == image.read_bytes()
    assert allocated(target) <= allocated(image) + 64 * 1024


def test_block_device_mode_falls_back_to_zeroout_then_to_writing_zeros(
    tmp_path, image, monkeypatch
):
    def unsupported(self, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not here")

    monkeypatch.setattr(disks.Zeroer, "_punch_hole", unsupported)
    target = tmp_path / "device.img"
    fill_with_garbage(target, 16 * MiB)
    writer = write_image(image, target, block_device=True)
    # A regular file knows no BLKZEROOUT (ENOTTY): zeros are written as the last resort.
    assert writer.zeroer is not None and writer.zeroer.method == "write_zeros"
    assert target.read_bytes() == image.read_bytes()


def test_the_writer_refuses_an_image_longer_or_shorter_than_its_size(tmp_path):
    with (
        SparseWriter(tmp_path / "a", 2 * MiB) as writer,
        pytest.raises(DiskError, match="longer"),
    ):
        for _ in range(3):
            writer.write(os.urandom(MiB))
    writer = SparseWriter(tmp_path / "b", 2 * MiB)
    writer.write(os.urandom(MiB))
    with pytest.raises(DiskError, match="ended at byte 1048576 of 2097152"):
        writer.close()


def test_a_missing_device_is_not_created_as_a_file(tmp_path):
    with pytest.raises(DiskError, match="not a block device"):
        SparseWriter(Path("/dev/baas-test-no-such-disk"), MiB)


@pytest.mark.parametrize(
    "extents",
    [
        [],
        [(0, 10)],
        [(4096, 1), (MiB - 3, 7), (3 * MiB, 5 * MiB + 17)],
        [(9 * MiB - 100, 100)],  # data right at the end
    ],
)
def test_the_hash_of_a_sparse_file_equals_hashlib_over_the_whole_file(tmp_path, extents):
    path = make_image(tmp_path / "sparse.img", 9 * MiB, extents, seed=len(extents))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hash_target(path, 9 * MiB) == expected
    assert hash_target(path, 9 * MiB, block_device=True) == expected


def test_the_hash_covers_only_the_first_size_bytes(tmp_path, image):
    size = 5 * MiB + 3
    assert hash_target(image, size) == hashlib.sha256(image.read_bytes()[:size]).hexdigest()
    with pytest.raises(DiskError, match="fewer than"):
        hash_target(image, 17 * MiB)


def test_the_hasher_reads_no_holes_from_disk(image, monkeypatch):
    read = []
    real_preadv = os.preadv

    def counting_preadv(fd, buffers, offset):
        got = real_preadv(fd, buffers, offset)
        read.append(got)
        return got

    monkeypatch.setattr(os, "preadv", counting_preadv)
    done = []
    hash_target(image, 16 * MiB, progress=done.append)
    assert sum(read) <= allocated(image)
    assert done[-1] == 16 * MiB
    assert all(len(chunk) <= 4 * MiB for chunk in read_target(image, 16 * MiB))


@pytest.mark.root
def test_on_a_block_device_zero_ranges_are_zeroed_by_the_device(image, loop_device):
    device, backing = loop_device
    writer = write_image(image, device)
    assert writer.block_device
    assert writer.zeroer is not None and writer.zeroer.method in ("punch_hole", "zeroout")
    expected = hashlib.sha256(image.read_bytes()).hexdigest()
    assert hash_target(device, 16 * MiB) == expected
    assert hashlib.sha256(backing.read_bytes()).hexdigest() == expected
