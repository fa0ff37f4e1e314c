"""Uploading versions through the API: streamed, checked, hashed, stored atomically and sparse."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import zstandard
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import AuditEvent
from catalogue.models import Compression, FileStandard, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map
from catalogue.storage import get_storage
from catalogue.tasks import purge_stale_uploads_task
from diskimage import BLOCK
from diskimage.seekable import data_frames, read_seek_table
from tests.catalogue.factories import ImageFactory

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


def disk_image(data_mib: int = 2, holes_mib: int = 6) -> bytes:
    """A disk-like image: random data, a run of zeros (a hole to keep), a tail."""
    return os.urandom(data_mib * MiB) + bytes(holes_mib * MiB) + b"end of disk" + bytes(BLOCK)


def url(image) -> str:
    return f"/api/image/{image.uuid}"


def post_raw(client, image, body: bytes, **headers):
    content_type = headers.pop("content_type", "application/octet-stream")
    return client.generic("POST", url(image), body, content_type=content_type, **headers)


def post_form(client, image, content: bytes, name: str = "disk.img", **fields):
    return client.post(
        url(image), {"file": SimpleUploadedFile(name, content), **fields}, format="multipart"
    )


def files_of(image) -> list[str]:
    directory = get_storage().image_dir(image.uuid)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def qcow2_file(tmp_path: Path, size: str = "64M", *extra: str) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), size], check=True)
    return path.read_bytes()


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


# --- The happy paths --------------------------------------------------------------------


def test_a_multipart_upload_becomes_version_one_identical_on_disk_with_its_holes(
    user_client, image
):
    data = disk_image()
    response = post_form(user_client, image, data)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["version"] == 1
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["compression"] == "none"
    path = get_storage().version_path(image.uuid, 1, "none")
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 <= 2 * MiB + 3 * BLOCK  # the 6 MiB of zeros are holes
    version = Version.objects.get(image=image, number=1)
    assert version.uploaded_by == user_client.user
    assert version.stored_size == path.stat().st_blocks * 512
    assert AuditEvent.objects.filter(action="version.upload", target_id=str(version.pk)).exists()


def test_a_raw_body_upload_takes_the_next_number(user_client, image):
    first, second = disk_image(1, 1), disk_image(1, 0)
    assert post_raw(user_client, image, first).json()["version"] == 1
    response = post_raw(user_client, image, second)
    assert response.status_code == 201
    assert response.json()["version"] == 2
    assert get_storage().version_path(image.uuid, 2, "none").read_bytes() == second


def test_a_put_with_a_binary_body_uploads_like_curl_upload_file(user_client, image):
    data = disk_image(1, 1)
    response = user_client.generic("PUT", url(image), data, content_type="")
    assert response.status_code == 201, response.json()
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_zstd_upload_is_stored_raw_for_an_uncompressed_image(user_client, image):
    data = disk_image()
    packed = zstandard.ZstdCompressor().compress(data)
    response = post_raw(user_client, image, packed, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 201, response.json()
    assert response.json()["size"] == len(data)
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    path = get_storage().version_path(image.uuid, 1, "none")
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 < 3 * MiB


def test_a_gzip_upload_to_a_gzip_image_is_stored_as_sent(user_client, user):
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    data = disk_image()
    packed = gzip.compress(data)
    response = post_raw(user_client, image, packed, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 201, response.json()
    assert response.json()["compression"] == "gzip"
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert get_storage().version_path(image.uuid, 1, "gzip").read_bytes() == packed


def test_a_zstd_upload_to_a_zstd_image_is_usable_at_once_then_stored_in_frames(
    user_client, user, django_capture_on_commit_callbacks
):
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    data = disk_image()
    packed = zstandard.ZstdCompressor().compress(data)
    response = post_raw(user_client, image, packed, content_type="application/zstd")
    assert response.status_code == 201, response.json()
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    raw = get_storage().version_path(image.uuid, 1, "none")
    assert raw.read_bytes() == data  # stored raw and sparse, downloadable right away
    assert raw.stat().st_blocks * 512 < 3 * MiB

    with django_capture_on_commit_callbacks(execute=True):
        version_compress(version_id=Version.objects.get(image=image, number=1).pk)

    stored = get_storage().version_path(image.uuid, 1, "zstd")
    unpacked = subprocess.run(["zstd", "-dc", str(stored)], capture_output=True, check=True)
    assert unpacked.stdout == data  # plain zstd to any decoder
    with stored.open("rb") as file:
        frames = read_seek_table(file.fileno())
    datamap = version_map(Version.objects.get(image=image, number=1))
    assert [(f.start, f.start + f.size) for f in data_frames(frames, datamap)] == [
        (start, end) for start, end, _ in datamap.ranges
    ]
    assert not raw.exists()


def test_a_gz_file_name_in_a_form_is_decompressed(user_client, image):
    data = disk_image(1, 2)
    response = post_form(user_client, image, gzip.compress(data), name="disk.img.gz")
    assert response.status_code == 201, response.json()
    assert get_storage().version_path(image.uuid, 1, "none").read_bytes() == data


def test_compressed_bytes_sent_without_saying_so_are_recognised(user_client, image):
    data = disk_image(1, 1)
    response = post_raw(user_client, image, zstandard.ZstdCompressor().compress(data))
    assert response.status_code == 201
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()


# --- Refusals: nothing stored --------------------------------------------------------------


def assert_nothing_stored(image) -> None:
    assert not Version.objects.filter(image=image, number__gte=1).exists()
    assert files_of(image) == []


def test_a_truncated_zstd_upload_is_refused(user_client, image):
    packed = zstandard.ZstdCompressor().compress(disk_image())
    response = post_raw(user_client, image, packed[:-100], HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 400
    assert "frame" in response.json()["detail"]
    assert_nothing_stored(image)


def test_an_unknown_content_encoding_is_415(user_client, image):
    response = post_raw(user_client, image, b"x" * 100, HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415
    assert "br" in response.json()["detail"]
    assert_nothing_stored(image)


def test_an_empty_upload_is_refused(user_client, image):
    response = post_raw(user_client, image, b"", CONTENT_LENGTH="0")
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_body_without_a_length_is_411(user_client, image):
    response = post_raw(user_client, image, b"")
    assert response.status_code == 411
    assert_nothing_stored(image)


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_matching_content_digest_is_accepted(user_client, image):
    data = disk_image(1, 1)
    response = post_raw(user_client, image, data, HTTP_CONTENT_DIGEST=f"sha-256=:{b64sha(data)}:")
    assert response.status_code == 201


def test_a_content_digest_of_the_compressed_bytes_is_accepted_too(user_client, image):
    packed = gzip.compress(disk_image(1, 1))
    digest = f"sha-512=:{base64.b64encode(bytes(64)).decode()}:, sha-256=:{b64sha(packed)}:"
    response = post_raw(
        user_client, image, packed, HTTP_CONTENT_ENCODING="gzip", HTTP_CONTENT_DIGEST=digest
    )
    assert response.status_code == 201, response.json()


def test_a_sha256_mismatch_is_400_and_nothing_is_stored(user_client, image):
    data = disk_image(1, 1)
    wrong = f"sha-256=:{b64sha(b'something else')}:"
    response = post_raw(user_client, image, data, HTTP_CONTENT_DIGEST=wrong)
    assert response.status_code == 400
    assert "mismatch" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_form_sha256_mismatch_is_400_and_nothing_is_stored(user_client, image):
    response = post_form(user_client, image, disk_image(1, 1), sha256="0" * 64)
    assert response.status_code == 400
    assert_nothing_stored(image)
    good = disk_image(1, 1)
    sha = hashlib.sha256(good).hexdigest()
    assert post_form(user_client, image, good, sha256=sha.upper()).status_code == 201


def test_a_malformed_digest_is_400(user_client, image):
    response = post_raw(user_client, image, b"x" * 100, HTTP_CONTENT_DIGEST="sha-256=nope")
    assert response.status_code == 400
    response = post_form(user_client, image, b"x" * 100, sha256="xyz")
    assert response.status_code == 400
    assert_nothing_stored(image)


def test_a_form_without_the_file_field_is_400(user_client, image):
    response = user_client.post(
        url(image), {"other": SimpleUploadedFile("a.img", b"abc")}, format="multipart"
    )
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_body_longer_than_the_limit_is_413_from_content_length(user_client, image, settings):
    settings.BAAS_MAX_IMAGE_SIZE = 1 * MiB
    response = post_raw(user_client, image, os.urandom(3 * MiB))
    assert response.status_code == 413
    assert_nothing_stored(image)


def test_an_image_that_expands_past_the_limit_is_413_midway(user_client, image, settings):
    settings.BAAS_MAX_IMAGE_SIZE = 8 * MiB
    bomb = zstandard.ZstdCompressor().compress(b"\1" * (64 * MiB))  # ~2 KiB on the wire
    response = post_raw(user_client, image, bomb, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert_nothing_stored(image)


def test_an_upload_a_little_over_the_limit_is_413_midway(user_client, image, settings):
    settings.BAAS_MAX_IMAGE_SIZE = 4 * MiB
    response = post_raw(user_client, image, os.urandom(4 * MiB + 1))
    assert response.status_code == 413
    assert_nothing_stored(image)


# --- File standards, with the real qemu-img ------------------------------------------------


def test_a_qcow2_image_takes_qcow2_data_and_records_its_virtual_size(user_client, user, tmp_path):
    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2)
    data = qcow2_file(tmp_path, "64M")
    response = post_form(user_client, image, data, name="disk.qcow2")
    assert response.status_code == 201, response.json()
    assert response.json()["size"] == len(data)
    assert response.json()["virtual_size"] == 64 * MiB
    path = get_storage().version_path(image.uuid, 1, "none")
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True
    )
    assert b'"virtual-size": 67108864' in info.stdout


def test_a_qcow2_image_refuses_raw_data(user_client, user):
    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2)
    response = post_raw(user_client, image, disk_image(1, 1))
    assert response.status_code == 400
    assert "qcow2" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_raw_image_refuses_qcow2_data(user_client, image, tmp_path):
    response = post_raw(user_client, image, qcow2_file(tmp_path))
    assert response.status_code == 400
    assert "qemu-img convert" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_qcow2_with_a_backing_file_is_refused(user_client, user, tmp_path):
    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2)
    base = tmp_path / "base.qcow2"
    base.write_bytes(qcow2_file(tmp_path))
    overlay = qcow2_file(tmp_path, "64M", "-b", str(base), "-F", "qcow2")
    response = post_raw(user_client, image, overlay)
    assert response.status_code == 400
    assert "backing file" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_corrupt_qcow2_file_is_refused_by_qemu_img(user_client, user, tmp_path):
    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2)
    data = bytearray(qcow2_file(tmp_path))
    data[48:56] = (2**40).to_bytes(8, "big")  # the L1 table far beyond the file
    response = post_raw(user_client, image, bytes(data))
    assert response.status_code == 400
    assert "qemu-img" in response.json()["detail"]
    assert_nothing_stored(image)


# --- Clean-up ------------------------------------------------------------------------------


def test_the_purge_job_removes_stale_part_files_only(image, settings):
    settings.BAAS_STALE_UPLOAD_SECONDS = 3600
    storage = get_storage()
    stale = storage.open_write(image.uuid)
    stale.write(b"abandoned by a killed server")
    stale._file.close()  # as the kernel does when the server dies: its lock goes
    os.utime(stale.path, (1, 1))
    fresh = storage.open_write(image.uuid)
    assert purge_stale_uploads_task() == 1
    assert not stale.path.exists()
    assert fresh.path.exists()
    stale.abort()
    fresh.abort()


def test_a_dashboard_upload_streams_with_its_csrf_token_in_a_header(image, user):
    from django.middleware.csrf import get_token
    from django.test import Client, RequestFactory

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    data = disk_image(1, 1)
    refused = browser.post(url(image), {"file": SimpleUploadedFile("disk.img", data)})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    token = get_token(RequestFactory().get("/"))
    browser.cookies["csrftoken"] = token
    response = browser.post(
        url(image), {"file": SimpleUploadedFile("disk.img", data)}, HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201, response.json()
    assert get_storage().version_path(image.uuid, 1, "none").read_bytes() == data
