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
