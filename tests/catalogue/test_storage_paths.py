"""The store is the only code that knows where files are: the small methods others ask
instead of building paths (a file beside a version, a copy into another store, a scratch file
for qemu-img, whether the root is usable). Paths from input are checked here, once."""

from __future__ import annotations

import os
import uuid

import pytest

from catalogue.storage import LocalStorage


@pytest.fixture
def store(tmp_path):
    (tmp_path / "images").mkdir()
    return LocalStorage(tmp_path / "images")


def test_a_file_beside_a_version_is_named_after_its_number(store):
    image = uuid.uuid4()
    assert store.beside_path(image, 3, ".raw") == store.root / str(image) / "3.raw"
    assert store.map_path(image, 3).name == "3.map.json"


@pytest.mark.parametrize(
    ("image", "number", "suffix"),
    [
        ("../../etc", 1, ".raw"),
        (str(uuid.uuid4()), -1, ".raw"),
        (str(uuid.uuid4()), "1", ".raw"),
        (str(uuid.uuid4()), 1, "/../../passwd"),
        (str(uuid.uuid4()), 1, "raw"),
    ],
)
def test_no_path_is_built_from_a_bad_image_number_or_suffix(store, image, number, suffix):
    with pytest.raises(ValueError):
        store.beside_path(image, number, suffix)


def test_a_version_file_is_found_only_when_it_is_there(store):
    image = uuid.uuid4()
    assert store.version_file(image, 0, "none") is None
    stored = store.create_sparse(image, 0, 4096)
    assert store.version_file(image, 0, "none") == stored.path
    assert store.version_file(image, 0, "zstd") is None


def test_a_raw_version_is_linked_into_another_store_at_the_same_place(store, tmp_path):
    image = uuid.uuid4()
    stored = store.create_sparse(image, 2, 8192)
    other = LocalStorage(tmp_path / "mount")
    other.root.mkdir()

    linked = other.version_file(image, 2, "none")
    assert linked is None
    linked = store.link_version(image, 2, into=other)
    assert linked == other.version_path(image, 2, "none")
    assert os.path.samefile(linked, stored.path)
    assert store.link_version(image, 2, into=other) == linked  # already there
    assert store.link_version(image, 5, into=other) is None  # no such file


def test_a_scratch_file_is_held_while_used_and_gone_after(store):
    image = uuid.uuid4()
    with store.scratch_file(image, ".qcow2") as scratch:
        assert scratch.parent == store.image_dir(image)
        assert scratch.name.endswith(".qcow2.part")
        assert store.purge_stale(older_than_seconds=0) == []  # a live writer's
    assert not scratch.exists()


def test_the_root_must_exist_and_be_writable(store, tmp_path):
    store.check_writable()
    missing = LocalStorage(tmp_path / "nowhere")
    with pytest.raises(OSError, match="does not exist"):
        missing.check_writable()


def test_a_versions_file_name_says_its_number_and_compression(store):
    assert store.version_name(7, "none") == "7.img"
    assert store.version_name(7, "zstd") == "7.img.zst"
    assert store.version_name(0, "gzip") == "0.img.gz"


@pytest.mark.parametrize(
    ("number", "compression"), [(-1, "none"), ("1", "none"), (True, "none"), (1, "lz4")]
)
def test_no_name_is_made_of_a_bad_number_or_compression(store, number, compression):
    with pytest.raises(ValueError):
        store.version_name(number, compression)


def test_a_map_is_there_once_written(store):
    image = uuid.uuid4()
    store.create_sparse(image, 1, 4096)
    assert not store.has_map(image, 1)
    store.map_write(image, 1, b"{}")
    assert store.has_map(image, 1)
    assert not store.has_map(image, 2)
    with pytest.raises(ValueError):
        store.has_map("../../etc", 1)


def test_a_rendition_is_put_in_place_with_its_map_and_read_back(store):
    image = uuid.uuid4()
    assert not store.has_rendition(image, 3)
    assert store.rendition_map_read(image, 3) is None
    with store.scratch_file(image, ".raw") as part:
        part.write_bytes(b"raw disk")
        store.rendition_store(image, 3, part, b'{"map": 1}')
    assert store.has_rendition(image, 3)
    assert store.rendition_map_read(image, 3) == b'{"map": 1}'
    with store.open_rendition(image, 3) as stream:
        assert stream.read() == b"raw disk"
    assert sorted(p.name for p in store.image_dir(image).iterdir()) == ["3.raw", "3.raw.map.json"]

    store.delete_rendition(image, 3)
    assert not store.has_rendition(image, 3)
    assert list(store.image_dir(image).iterdir()) == []
    with pytest.raises(FileNotFoundError):
        store.open_rendition(image, 3)


def test_a_rendition_is_stored_only_from_a_scratch_file_of_its_image(store, tmp_path):
    image = uuid.uuid4()
    elsewhere = tmp_path / "disk.part"
    elsewhere.write_bytes(b"raw disk")
    with pytest.raises(ValueError):
        store.rendition_store(image, 3, elsewhere, b"{}")
    with store.scratch_file(uuid.uuid4(), ".raw") as foreign, pytest.raises(ValueError):
        store.rendition_store(image, 3, foreign, b"{}")
    with store.scratch_file(image, ".raw") as part, pytest.raises(ValueError):
        store.rendition_store(image, -3, part, b"{}")
    assert not store.has_rendition(image, 3)


def test_an_image_directory_is_pruned_only_when_empty(store):
    image = uuid.uuid4()
    store.prune_image_dir(image)  # none: nothing to do
    store.create_sparse(image, 0, 4096)
    store.prune_image_dir(image)
    assert store.version_file(image, 0, "none") is not None
    store.delete_version(image, 0, "none")
    store.prune_image_dir(image)
    assert not store.image_dir(image).exists()
    with pytest.raises(ValueError):
        store.prune_image_dir("..")


def test_stored_files_are_read_from_their_names(store):
    image = uuid.uuid4()
    store.create_sparse(image, 2, 4096)
    store.map_write(image, 2, b"{}")
    (store.image_dir(image) / "notes.txt").write_bytes(b"")
    (store.image_dir(image) / "5.raw").write_bytes(b"")
    with store.scratch_file(image, ".qcow2") as scratch:
        entries = {entry.name: entry for entry in store.stored_entries()}
    assert set(entries) == {"2.img", "2.map.json", "notes.txt", "5.raw", scratch.name}
    assert {entry.image for entry in entries.values()} == {str(image)}
    version = entries["2.img"]
    assert (version.number, version.compression, version.part) == (2, "none", False)
    beside = entries["2.map.json"]
    assert (beside.number, beside.compression, beside.part) == (2, None, False)
    assert (entries["5.raw"].number, entries["5.raw"].compression) == (5, None)
    assert (entries["notes.txt"].number, entries["notes.txt"].part) == (None, False)
    assert (entries[scratch.name].number, entries[scratch.name].part) == (None, True)
