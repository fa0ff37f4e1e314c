"""A version's data written past the page cache (``O_DIRECT``) where the filesystem takes
it, and as before where it does not: the same bytes, the same holes, the same errors."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalogue.storage import LocalStorage
from catalogue.storage.direct import open_direct
from diskimage import BLOCK
from tests.diskimage.loopdev import loop_device

MiB = 1 << 20
STAGE = 16 * BLOCK  # a small stage, so that few bytes cross its edges


def takes_direct(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` opens files with ``O_DIRECT`` (asked apart
    from the code under test)."""
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError as exc:
        assert exc.errno in (errno.EINVAL, errno.EOPNOTSUPP)
        return False
    finally:
        probe.unlink()
    return True


# Pieces at increasing offsets: (gap before it, its length); a gap or a length that is no
# whole number of blocks starts or ends a piece inside a block.
PIECES = st.lists(
    st.tuples(
        st.one_of(st.just(0), st.integers(1, 3 * BLOCK), st.integers(0, 3).map(BLOCK.__mul__)),
        st.one_of(st.integers(1, 3 * BLOCK), st.integers(1, 40).map(BLOCK.__mul__)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=PIECES)
def test_pieces_written_directly_read_back_as_written_with_holes_between(tmp_path, pieces):
    path = tmp_path / f"{uuid.uuid4().hex}.part"
    expected = bytearray()
    with path.open("xb", buffering=0) as file:
        writer = open_direct(path, file.fileno(), stage=STAGE)
        assert (writer is not None) == takes_direct(tmp_path)
        if writer is None:
            pytest.skip("this filesystem refuses O_DIRECT: the fallback is tested below")
        try:
            for number, (gap, length) in enumerate(pieces):
                expected += bytes(gap)
                data = bytes([number % 255 + 1]) * length
                writer.write(memoryview(data), len(expected))
                expected += data
                assert writer.staged < STAGE
            writer.flush()
        finally:
            writer.close()
        assert writer.direct
    assert path.read_bytes() == bytes(expected)


def test_a_version_is_written_directly_and_reads_back_with_its_holes(tmp_path):
    store = LocalStorage(tmp_path)
    image = uuid.uuid4()
    data = os.urandom(20 * MiB + 100) + bytes(64 * BLOCK) + os.urandom(3 * BLOCK) + bytes(5000)
    with store.open_write(image) as pending:
        assert pending.direct == takes_direct(tmp_path)
        for start in range(0, len(data), 1_000_003):  # unaligned pieces, across the stage
            pending.write(data[start : start + 1_000_003])
            # What the file takes counts what is staged too (the quota reads it midway).
            assert pending.allocated() >= min(start, 20 * MiB)
        stored = pending.commit(1)
    assert stored.path.read_bytes() == data
    assert stored.size == len(data)
    assert 20 * MiB + 4 * BLOCK <= stored.allocated <= 20 * MiB + 8 * BLOCK


def test_a_version_is_written_as_before_where_direct_writes_are_refused(tmp_path):
    """ramfs refuses ``O_DIRECT``: the file is written through the page cache, the same.
    (tmpfs takes it since Linux 6.6.)"""
    if os.geteuid() != 0:
        pytest.skip("mounting a ramfs needs root")
    root = tmp_path / "ramfs"
    root.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(root)], check=True)
    try:
        assert not takes_direct(root)
        store = LocalStorage(root)
        data = os.urandom(9 * MiB) + bytes(16 * BLOCK) + os.urandom(BLOCK + 7)
        with store.open_write(uuid.uuid4()) as pending:
            assert not pending.direct
            pending.write(data)
            stored = pending.commit(1)
        assert stored.path.read_bytes() == data
        assert stored.allocated <= 9 * MiB + 2 * BLOCK  # the zero blocks stayed holes
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_a_version_is_finished_as_before_where_a_direct_write_is_refused_midway(tmp_path):
    """A device with 8 KiB blocks takes ``O_DIRECT`` writes of whole 8 KiB blocks and
    refuses ours at an offset that is a multiple of 4 KiB only (``EINVAL``): the data
    before was written directly, the rest goes through the page cache, and the version
    reads back the same, with its hole."""
    backing = tmp_path / "xfs-8k.img"
    with backing.open("wb") as handle:
        handle.truncate(512 * MiB)
    root = tmp_path / "mnt"
    root.mkdir()
    with loop_device(backing, sector_size=8192) as device:
        subprocess.run(
            ["mkfs.xfs", "-q", "-f", "-b", "size=8192", "-s", "size=8192", device], check=True
        )
        subprocess.run(["mount", device, str(root)], check=True)
        try:
            store = LocalStorage(root)
            # Data from 0 (whole 8 KiB blocks: direct), a 4 KiB zero block (a hole), then
            # data from 6 MiB + 4 KiB: the first direct write there is refused.
            data = os.urandom(6 * MiB) + bytes(BLOCK) + os.urandom(6 * MiB + 100)
            with store.open_write(uuid.uuid4()) as pending:
                assert pending.direct
                for start in range(0, len(data), 1_000_003):
                    pending.write(data[start : start + 1_000_003])
                stored = pending.commit(1)
                assert not pending.direct  # it fell back, midway
            assert stored.path.read_bytes() == data
            assert stored.size == len(data)
        finally:
            subprocess.run(["umount", str(root)], check=True)
