"""Versions share their unchanged blocks on XFS (reflink=1), raw and zstd, through the real
upload API and pipeline; deleting one never touches another; ext4 gets the same bytes as
before, with no sharing and no extra step. Filesystems are real and loop-mounted (root)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from catalogue.models import Compression, Image, Version
from catalogue.services.datamaps import version_map
from catalogue.services.lifecycle import versions_prune
from catalogue.services.pipeline import version_owed, version_state
from catalogue.storage import get_storage
from catalogue.tasks import version_advance_task
from diskimage.seekable import read_seek_table
from diskimage.verify import Verifier
from tests.catalogue.reflinkfs import (
    common_bytes,
    fresh_dir,
    mounted,
    shared_blocks,
    unshared,
)
from tests.catalogue.test_uploads import post_raw
from tests.conftest import client_for

pytestmark = [pytest.mark.root, pytest.mark.django_db]

MiB = 1 << 20
SIZE = 48 * MiB


@pytest.fixture(scope="module")
def xfs_mount(tmp_path_factory):
    yield from mounted(tmp_path_factory.mktemp("xfs"), "xfs")


@pytest.fixture(scope="module")
def ext4_mount(tmp_path_factory):
    yield from mounted(tmp_path_factory.mktemp("ext4"), "ext4")


@pytest.fixture
def xfs_root(settings, xfs_mount) -> Path:
    settings.BAAS_DISK_ROOT = fresh_dir(xfs_mount)
    return settings.BAAS_DISK_ROOT


@pytest.fixture
def ext4_root(settings, ext4_mount) -> Path:
    settings.BAAS_DISK_ROOT = fresh_dir(ext4_mount)
    return settings.BAAS_DISK_ROOT


def disk(seed: int = 1) -> bytearray:
    """48 MiB with ~20 MiB of data: a 20 MiB file (two map ranges), small files, zeros."""
    rng = random.Random(seed)  # noqa: S311 - test data
    content = bytearray(SIZE)
    content[MiB : 21 * MiB] = rng.randbytes(20 * MiB)
    for start in (24, 30, 31, 40):
        length = rng.randint(1, 256) * 4096
        content[start * MiB : start * MiB + length] = (b"config line %d\n" % start) * (
            length // 15
        ) + bytes(length % 15)
    return content


def changed(content: bytearray, blocks: list[int], seed: int = 2) -> bytes:
    """``content`` with the 4 KiB blocks at ``blocks`` (indexes) rewritten."""
    rng = random.Random(seed)  # noqa: S311 - test data
    out = bytearray(content)
    for block in blocks:
        out[block * 4096 : (block + 1) * 4096] = rng.randbytes(4096)
    return bytes(out)


def upload(client, image: Image, body: bytes) -> Version:
    response = post_raw(client, image, body)
    assert response.status_code == 201, response.content
    version = Version.objects.get(image=image, number=response.json()["version"])
    processed(version)
    version.refresh_from_db()
    return version


def processed(version: Version) -> list[str]:
    """Run the version's pipeline in-process until it owes nothing; the steps run."""
    steps = []
    for _ in range(10):
        answer = version_advance_task.apply(args=[version.pk]).get()
        steps.append(answer.split(":")[0])
        if answer.startswith("nothing"):
            return steps
    pytest.fail(f"version {version.pk} still owes work after {steps}")


def path_of(version: Version) -> Path:
    version.refresh_from_db()
    return get_storage().version_path(version.image_id, version.number, version.stored_compression)


def raw_bytes(version: Version) -> bytes:
    path = path_of(version)
    if version.stored_compression == Compression.ZSTD:  # as a person reads it
        return subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    return path.read_bytes()


def unchanged_frames(old: Version, new: Version) -> int:
    """Bytes of ``new``'s zstd file in frames of ranges that ``old`` has too (whole blocks)."""
    kept = set(version_map(old).ranges)
    with path_of(new).open("rb") as file:
        frames = read_seek_table(file.fileno())
    starts = {start: (start, end, digest) for start, end, digest in version_map(new).ranges}
    return sum(
        frame.length // 4096 * 4096
        for frame in frames
        if frame.size and starts.get(frame.start) in kept
    )


def new_image(user, compression: str) -> Image:
    client = client_for(user)
    created = client.post(
        f"/api/user/{user.username}/image",
        {"name": f"shared-{compression}", "compression": compression},
        format="json",
    )
    assert created.status_code == 201, created.content
    return Image.objects.get(pk=created.json()["uuid"])


# --- XFS: raw and zstd ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_new_version_shares_its_unchanged_blocks_and_survives_the_old_ones_prune(
    xfs_root, user, compression, django_capture_on_commit_callbacks
):
    image = new_image(user, compression)
    client = client_for(user)
    first = disk()
    second = changed(first, [300, 301, 2000, 7000])  # 16 KiB changed inside the 20 MiB file
    old = upload(client, image, bytes(first))
    new = upload(client, image, second)
    assert new.stored_compression == compression == old.stored_compression

    assert version_state(new) == "ready"
    if compression == "none":  # XFS's preallocation in the holes seeked over was given back
        assert old.stored_size <= version_map(old).data_bytes + MiB
    record = get_storage().share_record(image.uuid, new.number, compression)
    assert record["base"] == old.number and record["shared"] > 0
    common = common_bytes(path_of(old), path_of(new))
    data = version_map(new).data_bytes
    if compression == "none":
        # Every unchanged 64 KiB run of the 20 MiB data is shared: all but three 64 KiB pieces.
        assert common >= data - 3 * 64 * 1024 - 64 * 1024
    else:
        # The frame of every range that did not change (here a 4 MiB one and the small ones).
        assert common >= unchanged_frames(old, new) >= 4 * MiB
    assert shared_blocks(path_of(new)) >= common  # filefrag flags them as shared
    assert raw_bytes(new) == second and raw_bytes(old) == bytes(first)

    image.keep_versions = 1
    image.save(update_fields=["keep_versions"])
    old_path = path_of(old)
    with django_capture_on_commit_callbacks(execute=True):
        assert versions_prune(image_uuid=image.uuid) == [0, 1]
    assert not old_path.exists()
    assert raw_bytes(new) == second  # byte for byte, after its base's file was unlinked
    assert hashlib.sha256(raw_bytes(new)).hexdigest() == new.sha256
    assert unshared(path_of(new))  # nobody shares them any more


def test_a_version_made_from_an_older_base_shares_with_that_base(xfs_root, user):
    """A delta sync-back whose base is no longer the latest: its version is made from that
    base, so it shares with that base, not with the newest version (which differs)."""
    image = new_image(user, "none")
    client = client_for(user)
    first = disk()
    base = upload(client, image, bytes(first))
    upload(client, image, bytes(disk(seed=5)))  # the latest: other data altogether
    third = changed(first, [300, 7000])
    response = post_raw(client, image, third)
    assert response.status_code == 201, response.content
    made = Version.objects.get(image=image, number=response.json()["version"])
    Version.objects.filter(pk=made.pk).update(based_on=base.number)  # as compose records it
    processed(made)

    record = get_storage().share_record(image.uuid, made.number, "none")
    assert record["base"] == base.number and record["shared"] > 0
    assert common_bytes(path_of(base), path_of(made)) >= 16 * MiB
    assert raw_bytes(made) == third


def test_the_data_stream_and_the_map_check_still_hold_on_shared_blocks(xfs_root, user):
    image = new_image(user, "none")
    client = client_for(user)
    first = disk()
    old = upload(client, image, bytes(first))
    new = upload(client, image, changed(first, [5000]))
    assert common_bytes(path_of(old), path_of(new)) > 0
    with Verifier(path_of(new), version_map(new), sparse=True) as verifier:
        verifier.check_gaps()
        assert verifier.result() is None


def test_sharing_runs_once_and_again_for_a_file_swapped_in(xfs_root, user):
    image = new_image(user, "none")
    client = client_for(user)
    first = disk()
    upload(client, image, bytes(first))
    new = upload(client, image, changed(first, [10]))
    assert processed(new) == ["nothing"]  # recorded: not owed again
    new.refresh_from_db()
    assert version_owed(new).step is None

    image.compression = Compression.ZSTD  # every version rewritten: the new files owe it
    image.save(update_fields=["compression"])
    steps = processed(new)
    assert steps[-2:] == ["share", "nothing"] and "compress" in steps


def test_identical_uploads_hold_the_space_of_one(xfs_root, user):
    image = new_image(user, "none")
    client = client_for(user)
    body = bytes(disk())
    versions = [upload(client, image, body) for _ in range(4)]
    storage = get_storage()
    files = [(image.uuid, v.number, "none") for v in versions]
    one = versions[0].stored_size
    assert storage.held_bytes(files) <= one * 1.01
    usage = client.get(f"/api/user/{user.username}/usage").json()
    assert usage["used"] >= 4 * one * 0.99  # every version's own blocks, as before
    assert usage["held"] <= one * 1.01  # what the disk actually holds


# --- ext4: nothing changes ------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_on_ext4_the_same_bytes_are_stored_and_no_step_is_added(ext4_root, user, compression):
    image = new_image(user, compression)
    client = client_for(user)
    first = disk()
    second = changed(first, [300])
    old = upload(client, image, bytes(first))
    response = post_raw(client, image, second)
    new = Version.objects.get(image=image, number=response.json()["version"])
    steps = processed(new)
    assert "share" not in steps
    assert not get_storage().can_share()
    assert get_storage().share_record(image.uuid, new.number, compression) is None
    assert raw_bytes(new) == second and raw_bytes(old) == bytes(first)
    assert common_bytes(path_of(old), path_of(new)) == 0
    usage = client.get(f"/api/user/{user.username}/usage").json()
    # Nothing shared: the same bytes (less the few blocks of ext4's extent tree that
    # st_blocks counts and FIEMAP does not).
    assert usage["used"] - 64 * 1024 <= usage["held"] <= usage["used"]


def test_a_filesystem_without_extents_counts_allocated_bytes(user):
    # The default test root (whatever the machine's /tmp is) answers as before.
    image = new_image(user, "none")
    upload(client_for(user), image, bytes(disk()))
    usage = client_for(user).get(f"/api/user/{user.username}/usage").json()
    assert 0 < usage["held"] <= usage["used"]
    assert os.path.exists(get_storage().root)


def test_the_image_page_shows_the_bytes_held_and_the_logical_size(xfs_root, user, client):
    image = new_image(user, "none")
    api = client_for(user)
    first = disk()
    versions = [upload(api, image, bytes(first)), upload(api, image, changed(first, [9]))]
    logical = sum(v.stored_size for v in versions)
    held = get_storage().held_bytes([(image.uuid, v.number, "none") for v in versions])
    assert held < logical * 0.6
    client.force_login(user)
    page = client.get(f"/images/{image.uuid}/").content.decode()
    assert f'title="{held} bytes"' in page
    assert f'title="{logical} bytes"' in page
    assert "share their unchanged blocks" in page
