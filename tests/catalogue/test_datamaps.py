"""Data maps: built at upload, served to readers, rebuilt for versions without one."""

from __future__ import annotations

import hashlib
import io
import subprocess
import time

import pytest
import zstandard
from blake3 import blake3

from catalogue.models import Compression, ImageType, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import MapMismatch, version_map, version_map_build
from catalogue.services.lifecycle import versions_prune
from catalogue.services.pipeline import Owed, version_owed, versions_map_missing
from catalogue.storage import get_storage
from diskimage.datamap import BLOCK, DataMapper
from diskimage.seekable import read_seek_table
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.diskimage.layouts import disk_image, expected_ranges

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


def upload(client, image, body: bytes, **headers):
    response = client.generic(
        "POST",
        f"/api/image/{image.uuid}",
        body,
        content_type="application/octet-stream",
        **headers,
    )
    assert response.status_code == 201, response.content
    return response.json()


def get_map(client, image, number):
    return client.get(f"/api/image/{image.uuid}/{number}/map")


@pytest.mark.parametrize("encoding", ["none", "zstd"])
def test_an_upload_maps_its_data_and_serves_the_map(user, user_client, encoding):
    image = ImageFactory(owner=user)
    data = disk_image()
    body = data if encoding == "none" else zstandard.ZstdCompressor().compress(data)
    headers = {} if encoding == "none" else {"HTTP_CONTENT_ENCODING": "zstd"}
    number = upload(user_client, image, body, **headers)["version"]

    response = get_map(user_client, image, number)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    served = response.json()
    assert served["ranges"] == expected_ranges(data)
    assert len(served["ranges"]) == 4  # the long run was cut at RANGE_MAX
    assert (served["size"], served["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert served["data_bytes"] == sum(e - s for s, e, _ in served["ranges"])
    assert (served["format"], served["block_size"]) == ("baas-datamap/1", BLOCK)
    assert served["blake3"] == [blake3(data[s:e]).hexdigest() for s, e, _ in served["ranges"]]


def test_the_empty_version_0_has_an_empty_map(user, user_client):
    response = user_client.post(
        f"/api/user/{user.username}/image", {"name": "fresh"}, format="json"
    )
    image_uuid = response.json()["uuid"]
    served = user_client.get(f"/api/image/{image_uuid}/0/map").json()
    assert (served["size"], served["ranges"], served["data_bytes"]) == (4 * MiB, [], 0)
    assert served["sha256"] == hashlib.sha256(bytes(4 * MiB)).hexdigest()


def test_the_map_follows_the_images_read_rules(user, other_user, other_client, anon_client):
    private = VersionFactory(image=ImageFactory(owner=user), number=0)
    shared = VersionFactory(image=ImageFactory(owner=user, type=ImageType.SYSTEM), number=0)
    version_map_build(version_id=private.pk)
    version_map_build(version_id=shared.pk)
    assert get_map(other_client, private.image, 0).status_code == 404
    assert get_map(anon_client, private.image, 0).status_code == 401
    assert get_map(other_client, shared.image, 0).status_code == 200
    assert get_map(other_client, shared.image, 7).status_code == 404
    assert other_client.get("/api/image/not-a-uuid/0/map").status_code == 400


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD, Compression.GZIP])
def test_a_version_without_a_map_gets_one_built_from_its_file(
    user, user_client, django_capture_on_commit_callbacks, compression
):
    image = ImageFactory(owner=user, compression=compression)
    data = disk_image()
    number = upload(user_client, image, data)["version"]
    version = Version.objects.get(image=image, number=number)
    with django_capture_on_commit_callbacks(execute=True):
        version_compress(version_id=version.pk)  # stored as the image says
    version.refresh_from_db()
    assert version.stored_compression == compression
    storage = get_storage()
    built_at_upload = storage.map_read(image.uuid, number)
    storage.delete_map(image.uuid, number)

    with django_capture_on_commit_callbacks() as callbacks:
        missing = get_map(user_client, image, number)
    assert missing.status_code == 404
    assert missing["Retry-After"] == "60"
    assert len(callbacks) == 1  # the build is queued once the request commits

    version_map_build(version_id=version.pk)
    assert storage.map_read(image.uuid, number) == built_at_upload
    assert get_map(user_client, image, number).json()["ranges"] == expected_ranges(data)


def test_a_zstd_file_written_before_its_map_is_framed_once_the_map_is_built(
    user, user_client, django_capture_on_commit_callbacks
):
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    data = disk_image()
    number = upload(user_client, image, data)["version"]
    version = Version.objects.get(image=image, number=number)
    storage = get_storage()
    storage.delete_map(image.uuid, number)  # as for a version from before data maps
    with django_capture_on_commit_callbacks():
        version_compress(version_id=version.pk)  # no map: one frame, no seek table
    path = storage.version_path(image.uuid, number, "zstd")
    with path.open("rb") as file:
        assert read_seek_table(file.fileno()) is None

    with django_capture_on_commit_callbacks() as callbacks:
        version_map_build(version_id=version.pk)
    assert callbacks == []  # a step sends nothing: the pipeline's next step lays it out in frames
    assert version_owed(version) == Owed("mapped", "compress")
    version_compress(version_id=version.pk)
    with path.open("rb") as file:
        assert read_seek_table(file.fileno()) is not None
    unpacked = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
    assert unpacked.stdout == data
    response = user_client.get(f"/api/image/{image.uuid}/{number}/data")
    assert response.status_code == 200
    response.close()


def test_a_map_of_other_bytes_is_never_served(user, user_client):
    image = ImageFactory(owner=user)
    number = upload(user_client, image, disk_image())["version"]
    version = Version.objects.get(image=image, number=number)
    mapper = DataMapper()
    mapper.update(b"another image")
    get_storage().map_write(image.uuid, number, mapper.finish("0" * 64).dumps())
    assert version_map(version) is None
    assert get_map(user_client, image, number).status_code == 404


def test_a_file_of_the_wrong_size_gets_no_map(user):
    version = VersionFactory(image=ImageFactory(owner=user), number=0, content=b"x" * 5000)
    Version.objects.filter(pk=version.pk).update(size=4096)
    with pytest.raises(MapMismatch, match="its file holds 5000"):
        version_map_build(version_id=version.pk)
    assert get_storage().map_read(version.image_id, 0) is None


def test_pruned_versions_lose_their_maps(user, user_client, django_capture_on_commit_callbacks):
    image = ImageFactory(owner=user, keep_versions=1)
    for _ in range(2):
        upload(user_client, image, disk_image())
    storage = get_storage()
    with django_capture_on_commit_callbacks(execute=True):
        pruned = versions_prune(image_uuid=image.uuid)
    assert pruned == [1]
    assert not storage.map_path(image.uuid, 1).exists()
    assert storage.map_path(image.uuid, 2).exists()


# --- The data stream ---------------------------------------------------------------------


def data_of(data: bytes) -> bytes:
    return b"".join(data[s:e] for s, e, _ in expected_ranges(data))


def stored_as(user, user_client, compression, capture) -> tuple:
    image = ImageFactory(owner=user, compression=compression)
    data = disk_image()
    number = upload(user_client, image, data)["version"]
    with capture(execute=True):
        version_compress(version_id=Version.objects.get(image=image, number=number).pk)
    return image, number, data


def body_of(response) -> bytes:
    """The streamed body, read to the end (which closes the file)."""
    return b"".join(response.streaming_content)


def test_a_raw_version_streams_its_ranges_and_resumes(user, user_client):
    image = ImageFactory(owner=user)
    data = disk_image()
    number = upload(user_client, image, data)["version"]
    url = f"/api/image/{image.uuid}/{number}/data"

    whole = user_client.get(url)

    assert whole.status_code == 200
    assert whole["Content-Type"] == "application/octet-stream"
    assert body_of(whole) == data_of(data)
    assert int(whole["Content-Length"]) == len(data_of(data))
    etag = whole["ETag"]
    part = user_client.get(url, HTTP_RANGE="bytes=70000-", HTTP_IF_RANGE=etag)
    assert part.status_code == 206
    assert body_of(part) == data_of(data)[70000:]
    assert part["Content-Range"] == f"bytes 70000-{len(data_of(data)) - 1}/{len(data_of(data))}"
    stale = user_client.get(url, HTTP_RANGE="bytes=70000-", HTTP_IF_RANGE='"old"')
    assert stale.status_code == 200
    assert body_of(stale) == data_of(data)


def test_a_zstd_version_streams_its_data_frames(
    user, user_client, django_capture_on_commit_callbacks
):
    image, number, data = stored_as(
        user, user_client, Compression.ZSTD, django_capture_on_commit_callbacks
    )
    response = user_client.get(f"/api/image/{image.uuid}/{number}/data")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zstd"
    packed = body_of(response)
    assert len(packed) < len(data_of(data)) + 4096  # no zeros travel
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed), read_across_frames=True)
    assert reader.read() == data_of(data)


def test_a_gzip_version_or_one_without_a_map_has_no_data_stream(
    user, user_client, django_capture_on_commit_callbacks
):
    image, number, _ = stored_as(
        user, user_client, Compression.GZIP, django_capture_on_commit_callbacks
    )
    assert user_client.get(f"/api/image/{image.uuid}/{number}/data").status_code == 404
    raw = ImageFactory(owner=user)
    VersionFactory(image=raw, number=0)  # stored without a map
    assert user_client.get(f"/api/image/{raw.uuid}/0/data").status_code == 404


def test_the_data_stream_follows_the_images_read_rules(user, other_client, anon_client):
    version = VersionFactory(image=ImageFactory(owner=user), number=0)
    version_map_build(version_id=version.pk)
    url = f"/api/image/{version.image_id}/0/data"
    assert other_client.get(url).status_code == 404
    assert anon_client.get(url).status_code == 401


@pytest.mark.worker
def test_the_worker_maps_versions_that_have_no_map(celery_worker):
    image = ImageFactory(compression=Compression.ZSTD)
    contents = [disk_image() for _ in range(2)]
    versions = [VersionFactory(image=image, number=n, content=c) for n, c in enumerate(contents)]
    storage = get_storage()

    queued = versions_map_missing()  # what the hourly task runs: the builds go to the worker

    assert queued == [v.pk for v in versions]
    deadline = time.monotonic() + 30
    while not all(storage.map_path(image.uuid, v.number).exists() for v in versions):
        assert time.monotonic() < deadline, celery_worker.log()
        time.sleep(0.1)
    for version, content in zip(versions, contents, strict=True):
        assert version_map(version).ranges == tuple(tuple(r) for r in expected_ranges(content))
    assert versions_map_missing() == []  # nothing left to do


def test_a_framed_zst_downloaded_uploads_back_as_the_same_image(
    user, user_client, django_capture_on_commit_callbacks
):
    image, number, data = stored_as(
        user, user_client, Compression.ZSTD, django_capture_on_commit_callbacks
    )
    download = user_client.get(f"/api/image/{image.uuid}/{number}")
    assert download["Content-Type"] == "application/zstd"
    again = upload(user_client, image, body_of(download), HTTP_CONTENT_ENCODING="zstd")
    assert (again["version"], again["sha256"]) == (number + 1, hashlib.sha256(data).hexdigest())
