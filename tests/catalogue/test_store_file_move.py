"""A finished raw file given up by its maker (an import's ``mke2fs`` output) is moved
into the store as the pending file, not copied, and still goes through the upload path:
mapped, hashed, size-checked, committed atomically; on failure nothing stays."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from catalogue.exceptions import UploadTooLarge
from catalogue.interface import version_store_file
from catalogue.services.datamaps import version_map
from catalogue.storage import LocalStorage, StorageError
from diskimage import BLOCK
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_uploads import assert_nothing_stored

MiB = 1 << 20


def sparse_file(path: Path) -> bytes:
    """3 MiB: data, a hole, data that does not end on a block."""
    data = os.urandom(5 * BLOCK) + bytes(2 * MiB) + os.urandom(3 * BLOCK + 17)
    data += bytes(3 * MiB - len(data))
    with path.open("wb") as out:
        out.write(data[: 5 * BLOCK])
        out.seek(5 * BLOCK + 2 * MiB)
        out.write(data[5 * BLOCK + 2 * MiB : 8 * BLOCK + 2 * MiB + 17])
        out.truncate(len(data))
    return data


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


def test_a_moved_file_becomes_the_version_mapped_and_hashed_without_a_copy(image, user, settings):
    source = Path(settings.BAAS_DISK_ROOT).parent / f"made-{uuid.uuid4().hex}.img"
    data = sparse_file(source)
    inode = source.stat().st_ino
    version = version_store_file(actor=user, image=image, path=source, move=True)
    assert not source.exists()
    assert version.size == len(data)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    stored = LocalStorage(Path(settings.BAAS_DISK_ROOT)).version_file(
        image.uuid, version.number, "none"
    )
    assert stored is not None and stored.read_bytes() == data
    assert stored.stat().st_ino == inode  # the same file: not written again
    ranges = version_map(version).ranges
    assert [(start, end) for start, end, _ in ranges] == [
        (0, 5 * BLOCK),
        (5 * BLOCK + 2 * MiB, 9 * BLOCK + 2 * MiB),
    ]
    assert ranges[0][2] == hashlib.sha256(data[: 5 * BLOCK]).hexdigest()


def test_a_moved_file_refused_by_the_upload_checks_leaves_nothing(image, user, settings):
    settings.BAAS_MAX_IMAGE_SIZE = 2 * MiB
    source = Path(settings.BAAS_DISK_ROOT).parent / f"made-{uuid.uuid4().hex}.img"
    sparse_file(source)
    with pytest.raises(UploadTooLarge):
        version_store_file(actor=user, image=image, path=source, move=True)
    assert not source.exists()
    assert_nothing_stored(image)


def test_without_move_the_file_is_copied_and_left_to_its_maker(image, user, settings):
    source = Path(settings.BAAS_DISK_ROOT).parent / f"made-{uuid.uuid4().hex}.img"
    data = sparse_file(source)
    version = version_store_file(actor=user, image=image, path=source)
    assert source.read_bytes() == data
    assert version.sha256 == hashlib.sha256(data).hexdigest()


def test_an_adopted_file_is_locked_and_committed_only_at_the_size_that_was_read(tmp_path):
    store = LocalStorage(tmp_path / "root")
    (tmp_path / "root").mkdir()
    source = tmp_path / "made.img"
    source.write_bytes(b"x" * BLOCK * 2)
    image = uuid.uuid4()
    pending = store.adopt(image, source)
    assert pending is not None and not source.exists()
    assert store.purge_stale(older_than_seconds=-1) == []  # held: never purged
    pending.write(b"x" * BLOCK)  # fewer bytes than the file holds
    with pytest.raises(StorageError):
        pending.commit(1)
    assert list(store.image_dir(image).iterdir()) == []


def test_a_file_on_another_filesystem_is_not_adopted(tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem here")
    (tmp_path / "root").mkdir()
    store = LocalStorage(tmp_path / "root")
    source = other / f"baas-test-{uuid.uuid4().hex}.img"
    source.write_bytes(b"x" * BLOCK)
    try:
        assert store.adopt(uuid.uuid4(), source) is None
        assert source.read_bytes() == b"x" * BLOCK
    finally:
        source.unlink()


@pytest.mark.parametrize("move", [True, False])
def test_a_file_that_starts_and_ends_with_holes_is_read_where_it_has_data_only(
    image, user, settings, move
):
    """Holes at the start (before the upload's plan is chosen), inside a block of data and
    at the end: hashed and mapped as the zeros they read as, never read."""
    source = Path(settings.BAAS_DISK_ROOT).parent / f"made-{uuid.uuid4().hex}.img"
    data = bytes(3 * MiB) + os.urandom(2 * BLOCK + 100) + bytes(MiB) + os.urandom(BLOCK)
    data += bytes(2 * MiB)
    with source.open("wb") as out:
        out.seek(3 * MiB)
        out.write(data[3 * MiB : 3 * MiB + 2 * BLOCK + 100])
        out.seek(4 * MiB + 2 * BLOCK + 100)
        out.write(data[4 * MiB + 2 * BLOCK + 100 : 4 * MiB + 3 * BLOCK + 100])
        out.truncate(len(data))
    version = version_store_file(actor=user, image=image, path=source, move=move)
    assert version.size == len(data)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    stored = LocalStorage(Path(settings.BAAS_DISK_ROOT)).version_file(
        image.uuid, version.number, "none"
    )
    assert stored is not None and stored.read_bytes() == data
    ranges = version_map(version).ranges
    first = (3 * MiB, 3 * MiB + 3 * BLOCK)  # the data, to the end of its last block
    assert (ranges[0][0], ranges[0][1]) == first
    assert ranges[0][2] == hashlib.sha256(data[first[0] : first[1]]).hexdigest()
    assert ranges[-1][1] <= 4 * MiB + 4 * BLOCK


def test_a_store_given_up_by_its_stop_callback_leaves_nothing(image, user, settings):
    source = Path(settings.BAAS_DISK_ROOT).parent / f"made-{uuid.uuid4().hex}.img"
    source.write_bytes(os.urandom(3 * MiB))
    calls = []

    def stop() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        version_store_file(actor=user, image=image, path=source, move=True, stop=stop)
    assert len(calls) == 2, "called after each chunk read, and nothing read after it raised"
    assert not source.exists()
    assert_nothing_stored(image)
