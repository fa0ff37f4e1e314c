"""Compression bombs cost bounded work: decoding stops as soon as the output passes the size
the headers announced, at upload and in the jobs, and the version is marked damaged at once."""

from __future__ import annotations

import re

import pytest
import zstandard

from catalogue.models import Compression, Version
from catalogue.services.compression import VersionCorrupt, version_compress
from catalogue.services.datamaps import version_map_build
from catalogue.services.digests import version_digest_complete
from catalogue.services.processing import job_budget
from diskimage.decoders import ZstdDecoder
from diskimage.zstdblocks import BlockZstdDecoder, ZstdBlockError
from tests.catalogue.test_uploads import post_raw
from tests.catalogue.test_uploads_as_sent import image_of

MiB = 1 << 20
GiB = 1 << 30
# Past the 1 MiB inline hashing limit (stored as sent, decoded by a job), and more than the
# frame's window: libzstd itself objects only at the frame's end, a gigabyte later.
ANNOUNCED = 16 * MiB


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.BAAS_MAX_IMAGE_SIZE = 256 * MiB
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = MiB


def zstd_bomb(announced: int, zeros: int) -> bytes:
    """One zstd frame of ``zeros`` zero bytes whose header announces ``announced`` bytes:
    a few kilobytes for a gigabyte."""
    compressor = zstandard.ZstdCompressor(write_checksum=True).compressobj(size=zeros)
    chunk = bytes(16 * MiB)
    packed = bytearray()
    for _ in range(zeros // len(chunk)):
        packed += compressor.compress(chunk)
    packed += compressor.flush()
    descriptor = packed[4]
    width = (1 if descriptor & 0x20 else 0, 2, 4, 8)[descriptor >> 6]
    assert width in (4, 8)
    at = 5 + (0 if descriptor & 0x20 else 1) + (0, 1, 2, 4)[descriptor & 0x03]
    packed[at : at + width] = announced.to_bytes(width, "little")
    return bytes(packed)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return zstd_bomb(ANNOUNCED, GiB)


def decoded_before_stopping(reason: str) -> int:
    found = re.search(r"stopped after (\d+) bytes", reason)
    assert found, reason
    return int(found[1])


def upload_bomb(user_client, image, bomb: bytes) -> Version:
    response = post_raw(user_client, image, bomb, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 201, response.json()
    assert response.json()["size"] == ANNOUNCED
    return Version.objects.get(image=image, number=1)


def test_the_bomb_is_a_gigabyte_of_zeros_in_a_few_kilobytes(bomb):
    assert len(bomb) < 64 * 1024
    assert zstandard.frame_content_size(bomb) == ANNOUNCED


def test_the_digest_job_stops_near_the_announced_size_and_marks_it_damaged(user_client, user, bomb):
    version = upload_bomb(user_client, image_of(user), bomb)
    with pytest.raises(VersionCorrupt):
        version_digest_complete(version_id=version.pk)
    version.refresh_from_db()
    assert not version.sha256
    assert "upload it again" in version.damaged
    assert decoded_before_stopping(version.damaged) <= ANNOUNCED + MiB


def test_the_compression_job_stops_near_the_announced_size_and_marks_it_damaged(
    user_client, user, bomb
):
    version = upload_bomb(user_client, image_of(user, Compression.GZIP), bomb)
    with pytest.raises(VersionCorrupt):
        version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert version.stored_compression == Compression.ZSTD  # nothing swapped in
    assert decoded_before_stopping(version.damaged) <= ANNOUNCED + MiB


def test_the_map_job_stops_near_the_announced_size_and_marks_it_damaged(user_client, user, bomb):
    version = upload_bomb(user_client, image_of(user), bomb)
    with pytest.raises(VersionCorrupt):
        version_map_build(version_id=version.pk)
    version.refresh_from_db()
    assert decoded_before_stopping(version.damaged) <= ANNOUNCED + MiB


def test_an_upload_decoded_now_is_refused_as_soon_as_it_passes_its_header(user_client, user):
    image = image_of(user)
    bomb = zstd_bomb(ANNOUNCED, 256 * MiB)
    # A digest asked for: the upload is decoded (and hashed) while it streams.
    response = post_raw(
        user_client, image, bomb, HTTP_CONTENT_ENCODING="zstd", HTTP_WANT_REPR_DIGEST="sha-256=1"
    )
    assert response.status_code == 400, response.json()
    assert f"more than the {ANNOUNCED} bytes its header announces" in response.json()["detail"]
    assert not Version.objects.filter(image=image, number=1).exists()


@pytest.mark.parametrize("decoder", ["blocks", "stream"])
def test_the_decoders_stop_within_a_block_of_the_announced_size(decoder):
    small = zstd_bomb(16 * MiB, 128 * MiB)
    out = []
    if decoder == "blocks":
        blocks = BlockZstdDecoder(out.append, lambda n: out.append(bytes(n)))
        with pytest.raises(ZstdBlockError, match=f"more than the {16 * MiB} bytes"):
            for start in range(0, len(small), 512):
                blocks.write(small[start : start + 512])
    else:
        stream = ZstdDecoder(out.append)
        with pytest.raises(ValueError, match=f"more than the {16 * MiB} bytes"):
            for start in range(0, len(small), 512):
                stream.write(small[start : start + 512])
    assert sum(len(piece) for piece in out) <= 18 * MiB


def test_a_job_s_time_budget_grows_with_what_it_reads(settings):
    settings.BAAS_JOB_TIME_BASE = 60
    settings.BAAS_JOB_MIN_RATE = MiB
    settings.BAAS_JOB_MIN_RAW_RATE = 10 * MiB
    settings.BAAS_JOB_TIME_GRACE = 30
    assert job_budget(stored_size=0, size=0) == (60, 90)
    assert job_budget(stored_size=100 * MiB, size=1000 * MiB) == (260, 290)
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 200
    assert job_budget(stored_size=100 * MiB, size=1000 * MiB) == (200, 230)
