"""Reading a disk to check it (``diskimage.medium``): from the page cache where it holds the
bytes, from the medium (``O_DIRECT``) where it does not; the same bytes either way, and a
check of a disk nothing had cached leaves nothing cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskimage import BLOCK
from diskimage.holes import ShortRead
from diskimage.medium import Disk
from diskimage.verify import mismatch, read_buffer
from tests.diskimage.layouts import MiB, make_image, parsed
from tests.diskimage.loopdev import loop_device
from tests.diskimage.pagecache import resident

SIZE = 12 * MiB + 1234  # a tail that is no whole block
# Offsets on block boundaries (read from the medium where not cached) and off them.
OFFSETS = st.one_of(st.integers(0, SIZE // BLOCK).map(BLOCK.__mul__), st.integers(0, SIZE))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("medium")
    return make_image(directory / "image.raw", SIZE, [(0, 5 * MiB + 7), (7 * MiB, 5 * MiB + 1234)])


def takes_direct(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def drop(path: Path, start: int = 0, length: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    OFFSETS,
    OFFSETS,
    st.lists(st.tuples(st.integers(0, SIZE // BLOCK), st.integers(1, 1024)), max_size=4),
)
def test_pieces_are_the_disks_bytes_wherever_they_are_read_from(image, a, b, dropped):
    """Some of the file cached, some not (dropped): starts on and off block boundaries."""
    start, end = min(a, b), max(a, b)
    with image.open("rb") as file:
        file.read()  # all cached, then parts dropped
    for block, blocks in dropped:
        drop(image, block * BLOCK, blocks * BLOCK)
    disk = Disk(image)
    try:
        pieces = [bytes(piece) for piece in disk.pieces(start, end, read_buffer())]
    finally:
        disk.close()
    with image.open("rb") as file:
        assert b"".join(pieces) == os.pread(file.fileno(), end - start, start)


def test_a_disk_shorter_than_asked_is_a_short_read(image):
    drop(image)
    disk = Disk(image)
    try:
        with pytest.raises(ShortRead):
            list(disk.pieces(SIZE - 5000, SIZE + 100, read_buffer()))
    finally:
        disk.close()


def test_a_check_of_a_disk_nothing_cached_reads_the_medium_and_leaves_nothing_cached(image):
    if not takes_direct(image):
        pytest.skip("this filesystem refuses O_DIRECT: the check reads through the cache")
    datamap = parsed(image)
    drop(image)
    assert resident(image) == 0
    assert mismatch(image, datamap, fast=True) is None
    assert mismatch(image, datamap) is None
    # What a read through the cache would have left: every page of the data, not one.
    assert resident(image) <= 2  # the unaligned tail, read through the cache


def test_a_check_of_a_cached_disk_reads_the_cache_and_finds_a_change_there(image, tmp_path):
    """Bytes changed in the cache and not yet written back are what the disk holds."""
    copy = tmp_path / "copy.img"
    copy.write_bytes(image.read_bytes())
    datamap = parsed(image)
    assert mismatch(copy, datamap, fast=True) is None
    with copy.open("r+b") as file:  # dirty in the cache
        file.seek(8 * MiB)
        file.write(b"\x01" if image.read_bytes()[8 * MiB] != 1 else b"\x02")
    assert "mismatch" in mismatch(copy, datamap, fast=True)
    drop(copy, 0, 8 * MiB)  # the changed page cached and dirty, the ones before not
    assert "mismatch" in mismatch(copy, datamap, fast=True)


@pytest.mark.root
def test_a_disk_that_refuses_direct_reads_of_4_kib_is_read_through_the_cache(image, tmp_path):
    """A device with 8 KiB blocks refuses ``O_DIRECT`` reads at 4 KiB offsets (EINVAL)."""
    with loop_device(image, sector_size=8192) as device:
        disk = Disk(device)
        try:
            drop(device)
            got = b"".join(bytes(p) for p in disk.pieces(BLOCK, 9 * MiB, read_buffer()))
        finally:
            disk.close()
    assert got == image.read_bytes()[BLOCK : 9 * MiB]
