"""Version numbers come from the rows: a file a crash left without a row never makes one
skip; and the files under the image root can be checked against the rows."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from catalogue.models import Version
from catalogue.services.processing import storage_audit
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.catalogue.test_uploads import post_raw


@pytest.fixture
def image(user):
    image = ImageFactory(owner=user)
    VersionFactory(image=image, number=0, content=b"\0" * 4096)
    return image


def crash_debris(image, number: int) -> list:
    """What a server killed between putting a version's file in place and creating its row
    leaves: the file (in any compression) and its map."""
    storage = get_storage()
    paths = [
        storage.version_path(image.uuid, number, "none"),
        storage.version_path(image.uuid, number, "zstd"),
        storage.map_path(image.uuid, number),
    ]
    for path in paths:
        path.write_bytes(b"left by a crash")
    return paths


def test_a_stray_file_does_not_make_the_next_number_skip(user_client, image, caplog):
    debris = crash_debris(image, 1)
    data = os.urandom(8192)
    with caplog.at_level(logging.WARNING, logger="catalogue.storage"):
        response = post_raw(user_client, image, data)
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 1
    assert debris[0].read_bytes() == data  # the debris was replaced by the upload
    assert not debris[1].exists()
    assert "left by a crash" in caplog.text
    assert post_raw(user_client, image, os.urandom(8192)).json()["version"] == 2
    download = user_client.get(f"/api/image/{image.uuid}/1")
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == (
        hashlib.sha256(data).hexdigest()
    )
    download.close()


def test_the_audit_finds_stray_files_parts_and_rows_without_files(image):
    assert storage_audit().clean
    storage = get_storage()
    debris = crash_debris(image, 5)
    rendition = storage.image_dir(image.uuid) / "5.raw"  # a raw rendition of no version
    rendition.write_bytes(b"left by a crash")
    debris.append(rendition)
    leftover = storage.version_path(image.uuid, 0, "zstd")  # a compression's leftover
    leftover.write_bytes(b"left by a crash")
    debris.append(leftover)
    unnamed = storage.image_dir(image.uuid) / "notes.txt"  # no version's file at all
    unnamed.write_bytes(b"put there by hand")
    debris.append(unnamed)
    pending = storage.open_write(image.uuid)
    lost = Version.objects.create(image=image, number=3, size=10, sha256="0" * 64, stored_size=0)

    audit = storage_audit()
    assert not audit.clean
    directory = str(image.uuid)
    assert sorted(audit.stray_files) == sorted(
        [f"{directory}/{p.name}" for p in debris] + [f"{directory}/{pending.path.name}"]
    )
    assert audit.parts == [f"{directory}/{pending.path.name}"]
    assert audit.missing_files == [(directory, lost.number, "3.img")]

    pending.abort()
    for path in debris:
        path.unlink()
    lost.delete()
    assert storage_audit().clean
