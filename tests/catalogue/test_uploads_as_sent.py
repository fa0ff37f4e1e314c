"""Large zstd uploads stored as sent: answered once stored, decoded, mapped and laid out in
frames by the jobs that follow, found damaged there when they do not decode to their
headers' word."""

from __future__ import annotations

import os
import subprocess

import pytest
import zstandard

from catalogue.models import Compression, Version
from catalogue.services.compression import VersionCorrupt, needs_frames, version_compress
from catalogue.services.datamaps import version_map
from catalogue.services.digests import version_digest_complete
from catalogue.services.pipeline import Owed, version_owed
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.seekable import read_seek_table
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_compression import bearer, wait_for
from tests.catalogue.test_uploads import assert_nothing_stored, post_raw, qcow2_file
from tests.catalogue.test_uploads_digest import packed_zstd, sha, sparse_disk

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _large_from_one_mib(settings):
    settings.BAAS_MAX_IMAGE_SIZE = 64 * MiB
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = MiB


def image_of(user, compression: str = Compression.NONE):
    image = ImageFactory(owner=user, compression=compression)
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    return image


def path_of(image, compression: str, number: int = 1):
    return get_storage().version_path(image.uuid, number, compression)


def upload(user_client, image, body: bytes):
    return post_raw(user_client, image, body, HTTP_CONTENT_ENCODING="zstd")


def test_it_is_stored_as_sent_then_the_job_makes_it_the_raw_disk(user_client, user):
    image = image_of(user)
    data = sparse_disk()
    packed = packed_zstd(data)
    response = upload(user_client, image, packed)
    assert response.status_code == 201, response.json()
    assert (response.json()["size"], response.json()["sha256"]) == (len(data), None)
    assert path_of(image, "zstd").read_bytes() == packed  # nothing decoded yet
    version = Version.objects.get(image=image, number=1)
    assert version.stored_compression == Compression.ZSTD
    assert user_client.get(f"/api/image/{image.uuid}/1/map").status_code == 404  # not yet
    downloaded = user_client.get(f"/api/image/{image.uuid}/1?decompress=1")
    assert b"".join(downloaded.streaming_content) == data  # usable at once

    version_compress(version_id=version.pk)  # the image is uncompressed: back to raw
    version.refresh_from_db()
    assert (version.stored_compression, version.sha256) == (Compression.NONE, sha(data))
    assert path_of(image, "none").read_bytes() == data
    assert path_of(image, "none").stat().st_blocks * 512 <= 4 * MiB  # sparse
    assert not path_of(image, "zstd").exists()
    assert version_map(version).sha256 == sha(data)
    downloaded.close()  # last: it ends the request, and the test client's connection


def test_a_zstd_image_gets_it_mapped_then_laid_out_in_frames(
    user_client, user, django_capture_on_commit_callbacks
):
    image = image_of(user, Compression.ZSTD)
    data = sparse_disk()
    body = packed_zstd(data)
    response = upload(user_client, image, body)
    assert response.status_code == 201, response.json()
    version = Version.objects.get(image=image, number=1)
    assert not needs_frames(version)  # not known before its map
    data_url = f"/api/image/{image.uuid}/1/data"
    assert user_client.get(data_url).status_code == 404

    with django_capture_on_commit_callbacks() as callbacks:
        assert version_digest_complete(version_id=version.pk) == sha(data)
    assert callbacks == []  # a step sends nothing
    version.refresh_from_db()
    assert needs_frames(version)
    assert version_owed(version) == Owed("mapped", "compress")  # the pipeline's next step
    reading = path_of(image, "zstd").open("rb")  # a download that started before
    version_compress(version_id=version.pk)

    version.refresh_from_db()
    assert not needs_frames(version)
    stored = path_of(image, "zstd")
    with stored.open("rb") as file:
        assert read_seek_table(file.fileno()) is not None
    unpacked = subprocess.run(["zstd", "-dc", str(stored)], capture_output=True, check=True)
    assert unpacked.stdout == data
    assert version.stored_size == stored.stat().st_blocks * 512
    with reading:
        assert reading.read() == body  # the old file stays whole for its reader
    response = user_client.get(data_url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zstd"
    response.close()


def test_a_header_that_lies_about_the_size_makes_it_damaged(user_client, user):
    image = image_of(user)
    data = sparse_disk()
    response = upload(user_client, image, lying_zstd(data, len(data) + BLOCK))
    assert response.status_code == 201, response.json()
    assert response.json()["size"] == len(data) + BLOCK  # as announced, till the job looks
    version = Version.objects.get(image=image, number=1)

    with pytest.raises(VersionCorrupt):
        version_digest_complete(version_id=version.pk)
    version.refresh_from_db()
    assert version.damaged and not version.sha256


def test_a_frame_without_its_size_is_decoded_back_before_the_answer(user_client, user):
    image = image_of(user)
    data = sparse_disk()
    half = len(data) // 2
    body = packed_zstd(data[:half]) + packed_zstd(data[half:], content_size=False)
    response = upload(user_client, image, body)
    assert response.status_code == 201, response.json()
    assert (response.json()["size"], response.json()["sha256"]) == (len(data), sha(data))
    version = Version.objects.get(image=image, number=1)
    assert version_map(version).sha256 == sha(data)
    assert path_of(image, "zstd").read_bytes() == body


def test_qcow2_data_for_a_raw_image_is_refused_before_it_is_stored(
    user_client, user, tmp_path, settings
):
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = 64 << 10  # the qcow2 file is larger: as sent
    image = image_of(user)
    response = upload(user_client, image, packed_zstd(qcow2_file(tmp_path)))
    assert response.status_code == 400
    assert "qcow2" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_truncated_one_is_refused(user_client, user):
    image = image_of(user)
    response = upload(user_client, image, packed_zstd(sparse_disk())[:-100])
    assert response.status_code == 400
    assert "middle of a frame" in response.json()["detail"]
    assert_nothing_stored(image)


def test_one_announcing_more_than_the_limit_is_413_at_once(user_client, user, settings):
    settings.BAAS_MAX_IMAGE_SIZE = 8 * MiB
    image = image_of(user)
    response = upload(user_client, image, lying_zstd(sparse_disk(), 9 * MiB))
    assert response.status_code == 413
    assert_nothing_stored(image)


@pytest.mark.worker
def test_a_worker_digests_then_frames_it(celery_worker, live_server, user, tmp_path):
    image = image_of(user, Compression.ZSTD)
    data = sparse_disk()
    packed = tmp_path / "disk.img.zst"
    packed.write_bytes(packed_zstd(data))
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {bearer(user)}",
         "-H", "Content-Encoding: zstd", "-T", str(packed),
         f"{live_server.url}/api/image/{image.uuid}"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    version = Version.objects.get(image=image, number=1)

    def framed() -> bool:
        version.refresh_from_db()
        return (
            bool(version.sha256) and version_map(version) is not None and not needs_frames(version)
        )

    wait_for(framed, what="the digest job, then the compression job")
    assert version.sha256 == sha(data)
    unpacked = subprocess.run(["zstd", "-dc", str(path_of(image, "zstd"))], capture_output=True)
    assert unpacked.stdout == data


def lying_zstd(data: bytes, size: int) -> bytes:
    """``data`` as one zstd frame whose header announces ``size`` bytes instead."""
    packed = bytearray(packed_zstd(data))
    descriptor = packed[4]
    single_segment = bool(descriptor & 0x20)
    width = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    assert width >= 4, "a frame this large has a 4- or 8-byte content size"
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03]
    packed[at : at + width] = size.to_bytes(width, "little")
    return bytes(packed)


def test_the_lying_helper_lies_only_about_the_size():
    data = os.urandom(2 * MiB)
    lie = lying_zstd(data, 3 * MiB)
    assert zstandard.frame_content_size(lie) == 3 * MiB
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(lie)
