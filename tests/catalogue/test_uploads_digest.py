"""Large uploads answer once their data is stored; a background job records their SHA-256.

Past ``BAAS_UPLOAD_INLINE_SHA256_MAX`` raw bytes an upload does not wait for
the whole-image SHA-256 (one pass over every byte, zeros included): the data
map taken while it streamed is its check, and the digest job reads the stored
file back, checks it against that map and records the digest. A client that
sends or asks for a digest still gets it checked and answered at once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess

import pytest
import zstandard

from catalogue.models import Compression, Version
from catalogue.services.compression import VersionCorrupt, version_compress
from catalogue.services.datamaps import version_map
from catalogue.services.digests import version_digest_complete, version_digest_ensure
from catalogue.services.pipeline import version_state, versions_processing_sweep
from catalogue.storage import get_storage
from diskimage import BLOCK
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_compression import bearer, stored_as, wait_for
from tests.catalogue.test_uploads import assert_nothing_stored, disk_image, post_form, post_raw

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _large_from_one_mib(settings):
    """Every upload here is "large": its digest is left to the job past 1 MiB."""
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = MiB


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- The answer ----------------------------------------------------------------------


def test_a_large_upload_is_stored_and_answered_without_its_sha256(
    user_client, image, django_capture_on_commit_callbacks
):
    data = disk_image()
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_raw(user_client, image, data)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["version"], body["size"], body["sha256"]) == (1, len(data), None)
    assert "Repr-Digest" not in response
    assert response["Location"] == f"/api/image/{image.uuid}/1"
    version = Version.objects.get(image=image, number=1)
    assert version.sha256 == ""
    path = get_storage().version_path(image.uuid, 1, "none")
    assert path.read_bytes() == data  # usable at once
    assert path.stat().st_blocks * 512 < 3 * MiB  # and sparse
    datamap = version_map(version)
    assert datamap is not None and datamap.data_bytes < 3 * MiB  # the upload's own check
    assert len(callbacks) >= 1  # the digest job, sent once the row is committed
    served = user_client.get(f"/api/image/{image.uuid}/1/map").json()
    assert served["sha256"] is None  # the SHA-256s, whole and per range, are the job's
    assert {digest for _, _, digest in served["ranges"]} == {None}
    assert len(served["blake3"]) == len(served["ranges"]) >= 1  # the upload's own check

    listed = user_client.get(f"/api/image/{image.uuid}/versions").json()["results"]
    assert [v["sha256"] for v in listed if v["number"] == 1] == [None]


def test_the_digest_job_records_the_sha256_in_the_row_and_the_map(
    user_client, image, django_capture_on_commit_callbacks
):
    data = disk_image()
    assert post_raw(user_client, image, data).status_code == 201
    version = Version.objects.get(image=image, number=1)

    with django_capture_on_commit_callbacks(execute=True):
        assert version_digest_complete(version_id=version.pk) == sha(data)

    version.refresh_from_db()
    assert version.sha256 == sha(data)
    assert version_map(version).sha256 == sha(data)
    answer = user_client.get(f"/api/image/{image.uuid}/1/map").json()
    assert answer["sha256"] == sha(data)
    for start, end, digest in answer["ranges"]:
        assert digest == sha(data[start:end])
    listed = user_client.get(f"/api/image/{image.uuid}/versions").json()["results"]
    assert [v["sha256"] for v in listed if v["number"] == 1] == [sha(data)]
    # Running it again changes nothing.
    assert version_digest_complete(version_id=version.pk) == sha(data)


def test_a_download_before_the_digest_has_no_digest_header_and_its_own_etag(
    user_client, image, django_capture_on_commit_callbacks
):
    data = disk_image()
    assert post_raw(user_client, image, data).status_code == 201
    version = Version.objects.get(image=image, number=1)

    early = user_client.get(f"/api/image/{image.uuid}/1")
    assert b"".join(early.streaming_content) == data
    assert "Repr-Digest" not in early and "BAAS-Raw-Digest" not in early
    assert early["ETag"] == f'"version-{version.pk}"'

    with django_capture_on_commit_callbacks(execute=True):
        version_digest_complete(version_id=version.pk)
    later = user_client.get(f"/api/image/{image.uuid}/1")
    b"".join(later.streaming_content)
    assert later["ETag"] == f'"{sha(data)}"'
    assert later["Repr-Digest"] == f"sha-256=:{b64sha(data)}:"
    # A resume validated by the old tag gets the whole file again, never mixed bytes.
    resumed = user_client.get(
        f"/api/image/{image.uuid}/1", HTTP_RANGE="bytes=100-", HTTP_IF_RANGE=early["ETag"]
    )
    assert resumed.status_code == 200
    assert b"".join(resumed.streaming_content) == data


def test_a_small_upload_is_hashed_while_it_streams(user_client, image):
    data = os.urandom(MiB // 2)
    response = post_raw(user_client, image, data)
    assert response.status_code == 201
    assert response.json()["sha256"] == sha(data)
    assert response["Repr-Digest"] == f"sha-256=:{b64sha(data)}:"


# --- Clients that want the digest now ------------------------------------------------


def test_a_content_digest_is_checked_before_anything_is_stored(user_client, image):
    data = disk_image()
    wrong = post_raw(user_client, image, data, HTTP_CONTENT_DIGEST=f"sha-256=:{b64sha(b'x')}:")
    assert wrong.status_code == 400
    assert "mismatch" in wrong.json()["detail"]
    assert_nothing_stored(image)

    right = post_raw(user_client, image, data, HTTP_CONTENT_DIGEST=f"sha-256=:{b64sha(data)}:")
    assert right.status_code == 201
    assert right.json()["sha256"] == sha(data)
    assert right["Repr-Digest"] == f"sha-256=:{b64sha(data)}:"
    assert Version.objects.get(image=image, number=1).sha256 == sha(data)


def test_a_form_sha256_after_the_file_is_checked_against_the_stored_bytes(user_client, image):
    data = disk_image()
    assert post_form(user_client, image, data, sha256="0" * 64).status_code == 400
    assert_nothing_stored(image)

    response = post_form(user_client, image, data, sha256=sha(data))
    assert response.status_code == 201, response.json()
    assert response.json()["sha256"] == sha(data)


def test_a_form_digest_of_the_compressed_file_is_accepted(user_client, image):
    data = disk_image()
    packed = zstandard.ZstdCompressor().compress(data)
    response = post_form(user_client, image, packed, name="disk.img.zst", sha256=sha(packed))
    assert response.status_code == 201, response.json()
    assert response.json()["sha256"] == sha(data)


def test_want_repr_digest_makes_the_answer_wait_for_the_sha256(user_client, image):
    data = disk_image()
    packed = zstandard.ZstdCompressor().compress(data)
    response = post_raw(
        user_client,
        image,
        packed,
        HTTP_CONTENT_ENCODING="zstd",
        HTTP_WANT_REPR_DIGEST="sha-512=3, sha-256=10",
    )
    assert response.status_code == 201
    assert response.json()["sha256"] == sha(data)
    assert response["Repr-Digest"] == f"sha-256=:{b64sha(data)}:"

    declined = post_raw(user_client, image, data, HTTP_WANT_REPR_DIGEST="sha-256=0")
    assert declined.json()["sha256"] is None


def test_a_gzip_upload_stored_as_sent_gets_its_digest_from_the_job(
    user_client, user, django_capture_on_commit_callbacks
):
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    data = disk_image()
    packed = subprocess.run(["gzip", "-c"], input=data, capture_output=True, check=True).stdout
    response = post_raw(user_client, image, packed, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 201
    assert (response.json()["sha256"], response.json()["compression"]) == (None, "gzip")

    with django_capture_on_commit_callbacks(execute=True):
        version_digest_complete(version_id=Version.objects.get(image=image, number=1).pk)
    assert Version.objects.get(image=image, number=1).sha256 == sha(data)


# --- Whoever needs it first computes it -------------------------------------------------


def test_compressing_a_version_without_its_digest_records_it_first(
    user_client, user, django_capture_on_commit_callbacks
):
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    data = disk_image()
    assert post_raw(user_client, image, data).json()["sha256"] is None
    version = Version.objects.get(image=image, number=1)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = version_compress(version_id=version.pk)

    assert outcome.stored_compression == Compression.ZSTD
    version.refresh_from_db()
    assert version.sha256 == sha(data)
    stored = get_storage().version_path(image.uuid, 1, "zstd")
    unpacked = subprocess.run(["zstd", "-dc", str(stored)], capture_output=True, check=True)
    assert unpacked.stdout == data


def test_ensure_computes_it_on_the_spot(user_client, image, django_capture_on_commit_callbacks):
    data = disk_image()
    post_raw(user_client, image, data)
    version = Version.objects.get(image=image, number=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert version_digest_ensure(version) == sha(data)
    assert version.sha256 == sha(data)


def test_a_file_changed_on_disk_before_the_job_is_shown_damaged(
    user_client, image, signed_in, settings
):
    data = disk_image()
    post_raw(user_client, image, data)
    version = Version.objects.get(image=image, number=1)
    path = get_storage().version_path(image.uuid, 1, "none")
    with open(path, "r+b") as file:  # one flipped byte in the data
        file.seek(5 * BLOCK)
        byte = file.read(1)
        file.seek(5 * BLOCK)
        file.write(bytes([byte[0] ^ 1]))

    with pytest.raises(VersionCorrupt, match="no longer holds the data its upload sent"):
        version_digest_complete(version_id=version.pk)
    with pytest.raises(VersionCorrupt):
        version_digest_ensure(version)
    version.refresh_from_db()
    assert version.sha256 == ""
    listed = user_client.get(f"/api/image/{image.uuid}/versions").json()["results"]
    (shown,) = [v for v in listed if v["number"] == 1]
    assert shown["sha256"] is None
    assert "no longer holds the data its upload sent" in shown["damaged"]
    assert version_state(version) == "damaged"
    settings.BAAS_JOB_LOST_SECONDS = 0  # its job counts as lost at once
    assert versions_processing_sweep()["resent"] == []  # its file will not get better
    page = signed_in.get(f"/images/{image.uuid}/")
    assert "Damaged: " in page.content.decode()


def test_the_sweep_sends_again_the_versions_whose_digest_job_was_lost(user_client, image, settings):
    post_raw(user_client, image, disk_image())
    version = Version.objects.get(image=image, number=1)
    assert version_state(version) == "received"
    assert versions_processing_sweep()["resent"] == []  # sent with the upload: awaited
    settings.BAAS_JOB_LOST_SECONDS = 0  # now long lost
    assert versions_processing_sweep()["resent"] == [version.pk]


# --- Through a real worker -------------------------------------------------------------


@pytest.mark.worker
def test_a_worker_records_the_digest_then_compresses(celery_worker, live_server, user, tmp_path):
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    data = disk_image(2, 8)
    disk = tmp_path / "disk.img"
    disk.write_bytes(data)
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "-H",
            f"Authorization: Bearer {bearer(user)}",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(disk),
            f"{live_server.url}/api/image/{image.uuid}",
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert b'"sha256":null' in result.stdout
    version = Version.objects.get(image=image, number=1)

    wait_for(lambda: stored_as(version, Compression.ZSTD), what="the digest and compression jobs")
    assert version.sha256 == sha(data)
    stored = get_storage().version_path(image.uuid, 1, "zstd")
    unpacked = subprocess.run(["zstd", "-dc", str(stored)], capture_output=True, check=True)
    assert unpacked.stdout == data
    assert version_map(version).sha256 == sha(data)


def test_compression_finds_a_file_changed_before_its_digest_damaged(user_client, user):
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    post_raw(user_client, image, disk_image())
    version = Version.objects.get(image=image, number=1)
    with open(get_storage().version_path(image.uuid, 1, "none"), "r+b") as file:
        file.write(b"X")

    with pytest.raises(VersionCorrupt):
        version_compress(version_id=version.pk)

    version.refresh_from_db()
    assert (version.sha256, version.stored_compression) == ("", Compression.NONE)
    assert "no longer holds the data its upload sent" in version.damaged
    assert not get_storage().version_path(image.uuid, 1, "gzip").exists()


# --- zstd uploads: zeros skipped, frame checksums left to the job ---------------------------
#
# A large zstd upload whose frames tell their size is stored as sent (below); one that does
# not is decoded at once, its zeros never written, its frame checksums left to the job.


def packed_zstd(data: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True, write_content_size=content_size).compress(
        data
    )


def damaged_zstd(data: bytes, *, content_size: bool = True) -> bytes:
    """``data`` as zstd (one frame, with its checksum), one byte flipped inside a raw
    block: it still decodes, to other bytes, which only the checksum tells."""
    packed = bytearray(packed_zstd(data, content_size=content_size))
    packed[len(packed) // 4] ^= 1  # random data: stored in raw blocks
    return bytes(packed)


def sparse_disk() -> bytes:
    """Random data around a run of zeros much longer than zstd's window: 3.5 MiB that do
    not compress, so that even a stream that does not tell its size is known to be large
    (past the 1 MiB inline limit) from its length."""
    return os.urandom(3 * MiB) + bytes(12 * MiB) + os.urandom(MiB // 2) + bytes(BLOCK)


def test_a_large_zstd_upload_without_sizes_is_stored_sparse_its_checksums_left_to_the_job(
    user_client, image, django_capture_on_commit_callbacks
):
    data = sparse_disk()
    packed = packed_zstd(data, content_size=False)
    response = post_raw(user_client, image, packed, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 201, response.json()
    assert (response.json()["size"], response.json()["sha256"]) == (len(data), None)
    path = get_storage().version_path(image.uuid, 1, "none")
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 <= 4 * MiB  # the zeros were never written
    version = Version.objects.get(image=image, number=1)
    (checksum,) = version_map(version).zstd_checksums
    assert checksum[:2] == (0, len(data))

    with django_capture_on_commit_callbacks(execute=True):
        assert version_digest_complete(version_id=version.pk) == sha(data)
    version.refresh_from_db()
    assert version_map(version).zstd_checksums is None  # checked, and gone from the map
    assert "zstd_checksums" not in user_client.get(f"/api/image/{image.uuid}/1/map").json()


@pytest.mark.parametrize("content_size", [True, False], ids=["stored-as-sent", "decoded"])
def test_a_zstd_upload_damaged_on_the_way_is_found_damaged_by_the_job(
    user_client, image, content_size
):
    data = sparse_disk()
    body = damaged_zstd(data, content_size=content_size)
    response = post_raw(user_client, image, body, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 201, response.json()  # decodes: the checksum is the job's
    version = Version.objects.get(image=image, number=1)

    with pytest.raises(VersionCorrupt, match="damaged on the way"):
        version_digest_complete(version_id=version.pk)
    version.refresh_from_db()
    assert version.sha256 == "" and "damaged on the way" in version.damaged
    listed = user_client.get(f"/api/image/{image.uuid}/versions").json()["results"]
    assert "damaged on the way" in next(v for v in listed if v["number"] == 1)["damaged"]


def test_compression_checks_the_checksums_of_a_zstd_upload_in_its_pass(user_client, user):
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    body = damaged_zstd(sparse_disk(), content_size=False)
    response = post_raw(user_client, image, body, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 201, response.json()
    version = Version.objects.get(image=image, number=1)

    with pytest.raises(VersionCorrupt, match="frame checksum differs"):
        version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert "damaged on the way" in version.damaged
    assert stored_as(version, Compression.NONE)  # left as it is
    assert not get_storage().version_path(image.uuid, 1, "zstd").exists()


def test_a_damaged_zstd_upload_that_must_be_hashed_now_is_refused(user_client, image, settings):
    data = sparse_disk()
    # Hashed while it streams (small): libzstd checks the checksum at once.
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = 64 * MiB
    response = post_raw(user_client, image, damaged_zstd(data), HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 400
    assert "checksum" in response.json()["detail"]
    assert_nothing_stored(image)
    # Large, but its digest comes after the file: read back, then checked, before commit.
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = MiB
    response = post_form(
        user_client, image, damaged_zstd(data), name="disk.img.zst", sha256=sha(data)
    )
    assert response.status_code == 400
    assert "damaged on the way" in response.json()["detail"]
    assert_nothing_stored(image)
