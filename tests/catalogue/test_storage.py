"""The local image store: sparse, atomic, never overwriting."""

from __future__ import annotations

import os
import uuid

import pytest

from catalogue.storage import LocalStorage, VersionExists
from diskimage import BLOCK


@pytest.fixture
def store(tmp_path):
    return LocalStorage(tmp_path)


def test_an_empty_six_gigabyte_image_allocates_nothing(store):
    stored = store.create_sparse(uuid.uuid4(), 0, 6 * 1024**3)
    assert stored.size == 6 * 1024**3
    assert stored.allocated == 0
    assert stored.path.name == "0.img"


def test_zero_blocks_stay_holes_and_the_bytes_read_back_identical(store):
    image = uuid.uuid4()
    data = os.urandom(3 * BLOCK) + bytes(64 * BLOCK) + b"tail" + bytes(10 * BLOCK)
    with store.open_write(image) as pending:
        for start in range(0, len(data), 10000):  # unaligned chunks
            pending.write(data[start : start + 10000])
        stored = pending.commit(1)
    assert stored.path.read_bytes() == data
    assert stored.size == len(data)
    assert stored.allocated <= 6 * BLOCK


def test_a_version_is_never_overwritten(store):
    image = uuid.uuid4()
    store.create_sparse(image, 0, 1024)
    with pytest.raises(VersionExists), store.open_write(image) as pending:
        pending.write(b"new")
        pending.commit(0)
    assert store.stat(image, 0, "none").size == 1024
    assert [p.name for p in store.image_dir(image).iterdir()] == ["0.img"]


def test_an_aborted_write_leaves_nothing(store):
    image = uuid.uuid4()
    with pytest.raises(RuntimeError), store.open_write(image) as pending:
        pending.write(b"x" * 10)
        raise RuntimeError("client went away")
    assert list(store.image_dir(image).iterdir()) == []


def test_stale_part_files_are_purged_and_fresh_or_held_ones_kept(store):
    image = uuid.uuid4()
    old = store.open_write(image)
    old.write(b"abandoned")
    old._file.close()  # what the kernel does when the writer dies: its lock goes
    os.utime(old.path, (1, 1))
    fresh = store.open_write(image)
    fresh._file.close()
    held = store.open_write(image)  # a slow upload: old, but its writer lives
    os.utime(held.path, (1, 1))
    assert store.purge_stale(older_than_seconds=3600) == [old.path]
    assert fresh.path.exists()
    assert held.path.exists()
    for pending in (fresh, old, held):
        pending.abort()


def test_paths_are_built_only_from_valid_uuids(store):
    with pytest.raises(ValueError):
        store.image_dir("../../etc")
    with pytest.raises(ValueError):
        store.version_path(uuid.uuid4(), -1, "none")
