"""Uploads of Android sparse images: the raw image without its holes, from img2simg or
from contrib/upload/baas-upload, stored exactly as the raw upload of the same disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard

from accounts.services import token_create
from catalogue.models import Version
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.sparse import CRC32, DONT_CARE, MEDIA_TYPE, RAW
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_uploads import assert_nothing_stored, b64sha, post_form, post_raw
from tests.diskimage.test_sparse import CLIENT, sparse

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


@pytest.fixture
def image(user):
    image = ImageFactory(owner=user)
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    return image


def sparse_file(tmp_path: Path) -> tuple[bytes, Path]:
    """A sparse disk file: data, 10 MiB of hole, zeros written out, data; and its img2simg."""
    raw = tmp_path / "disk.img"
    data = os.urandom(MiB + 8192) + bytes(10 * MiB) + bytes(2 * MiB) + os.urandom(3 * BLOCK)
    with open(raw, "wb") as f:
        f.write(data[: MiB + 8192])
        f.seek(11 * MiB + 8192)
        f.write(data[11 * MiB + 8192 :])  # the written zeros and the tail
    assert raw.read_bytes() == data
    simg = tmp_path / "disk.simg"
    subprocess.run(["img2simg", raw, simg], check=True)
    return data, simg


def stored(image, number: int = 1) -> Path:
    return get_storage().version_path(image.uuid, number, "none")


def test_an_img2simg_image_is_stored_as_the_raw_disk_with_its_holes(user_client, image, tmp_path):
    data, simg = sparse_file(tmp_path)
    response = post_raw(user_client, image, simg.read_bytes(), content_type=MEDIA_TYPE)
    assert response.status_code == 201, response.json()
    answer = response.json()
    assert (answer["version"], answer["size"]) == (1, len(data))
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored(image).read_bytes() == data
    assert stored(image).stat().st_blocks * 512 <= MiB + 8 * BLOCK  # zeros written: holes
    ranges = user_client.get(f"/api/image/{image.uuid}/1/map").json()["ranges"]
    assert [r[:2] for r in ranges] == [[0, MiB + 8192], [len(data) - 3 * BLOCK, len(data)]]


def test_a_sparse_image_is_recognised_without_being_declared(user_client, image, tmp_path):
    data, simg = sparse_file(tmp_path)
    response = post_raw(user_client, image, simg.read_bytes())  # application/octet-stream
    assert response.status_code == 201, response.json()
    assert stored(image).read_bytes() == data


def test_a_simg_file_in_a_form_is_decoded(user_client, image, tmp_path):
    data, simg = sparse_file(tmp_path)
    response = post_form(user_client, image, simg.read_bytes(), name="disk.simg")
    assert response.status_code == 201, response.json()
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_digest_of_the_raw_image_is_checked(user_client, image, tmp_path):
    data, simg = sparse_file(tmp_path)
    body = simg.read_bytes()
    right = f"sha-256=:{b64sha(data)}:"
    response = post_raw(user_client, image, body, content_type=MEDIA_TYPE, HTTP_REPR_DIGEST=right)
    assert response.status_code == 201, response.json()
    wrong = f"sha-256=:{b64sha(data + b'!')}:"
    response = post_raw(user_client, image, body, content_type=MEDIA_TYPE, HTTP_REPR_DIGEST=wrong)
    assert response.status_code == 400
    assert "mismatch" in response.json()["detail"]
    assert not Version.objects.filter(image=image, number=2).exists()


def test_a_truncated_sparse_image_is_refused_and_nothing_is_stored(user_client, image, tmp_path):
    _data, simg = sparse_file(tmp_path)
    cut = simg.read_bytes()[:-5000]
    response = post_raw(user_client, image, cut, content_type=MEDIA_TYPE)
    assert response.status_code == 400
    assert "is it complete" in response.json()["detail"]
    assert_nothing_stored(image)


def test_a_sparse_image_announcing_more_than_the_limit_is_413_at_once(user_client, image, settings):
    settings.BAAS_MAX_IMAGE_SIZE = 64 * MiB
    body = sparse([(DONT_CARE, 1 << 20, b"")])  # 4 GiB of zeros in 40 bytes
    response = post_raw(user_client, image, body, content_type=MEDIA_TYPE)
    assert response.status_code == 413
    assert "announces 4294967296 bytes" in response.json()["detail"]
    assert_nothing_stored(image)


def test_crc32_chunks_are_checked_against_what_was_stored(user_client, image):
    head, tail = os.urandom(2 * BLOCK), os.urandom(BLOCK)
    image_bytes = head + bytes(64 * BLOCK) + tail
    crc = zlib.crc32(image_bytes).to_bytes(4, "little")
    chunks = [(RAW, 2, head), (DONT_CARE, 64, b""), (RAW, 1, tail)]
    good = sparse([*chunks, (CRC32, 0, crc)])
    response = post_raw(user_client, image, good, content_type=MEDIA_TYPE)
    assert response.status_code == 201, response.json()
    assert stored(image).read_bytes() == image_bytes

    wrong = (zlib.crc32(image_bytes) ^ 1).to_bytes(4, "little")
    response = post_raw(user_client, image, sparse([*chunks, (CRC32, 0, wrong)]),
                        content_type=MEDIA_TYPE)  # fmt: skip
    assert response.status_code == 400
    assert "CRC-32" in response.json()["detail"]
    assert not Version.objects.filter(image=image, number=2).exists()
    assert not stored(image, 2).exists()


def test_a_compressed_sparse_image_is_refused_with_what_to_send(user_client, image, tmp_path):
    _data, simg = sparse_file(tmp_path)
    packed = zstandard.ZstdCompressor().compress(simg.read_bytes())
    response = post_raw(user_client, image, packed, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 400
    assert "sparse image itself, uncompressed" in response.json()["detail"]
    assert_nothing_stored(image)


# --- contrib/upload/baas-upload against the live server --------------------------------------


@pytest.fixture
def secret(user) -> str:
    return token_create(actor=user, user=user, name="client")[1]


def client(*args, secret: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BAAS_TOKEN": secret or ""}
    return subprocess.run(
        [CLIENT, *map(str, args)], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip


def test_the_client_uploads_only_the_data_and_the_version_is_the_disk(
    live_server, image, secret, tmp_path
):
    data, _ = sparse_file(tmp_path)
    disk = tmp_path / "disk.img"
    result = client(f"{live_server.url}/api/image/{image.uuid}", disk, secret=secret)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["version"], answer["size"]) == (1, len(data))
    assert stored(image).read_bytes() == data
    assert stored(image).stat().st_blocks * 512 <= MiB + 8 * BLOCK


def test_the_client_sends_the_digest_when_asked_and_gets_it_back(
    live_server, image, secret, tmp_path, settings
):
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = MiB  # this image is past it: the answer waits
    data, _ = sparse_file(tmp_path)
    url = f"{live_server.url}/api/image/{image.uuid}"
    result = client("--digest", url, tmp_path / "disk.img", secret=secret)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sha256"] == hashlib.sha256(data).hexdigest()


def test_the_client_reports_a_refusal_and_fails(live_server, user, secret, tmp_path, other_user):
    theirs = ImageFactory(owner=other_user)
    sparse_file(tmp_path)
    url = f"{live_server.url}/api/image/{theirs.uuid}"
    result = client(url, tmp_path / "disk.img", secret=secret)
    assert result.returncode == 1
    assert "404" in result.stderr
    assert not Version.objects.filter(image=theirs).exists()
    result = client(url, tmp_path / "disk.img")
    assert result.returncode == 2
    assert "No token" in result.stderr


def test_a_sparse_image_of_nothing_is_refused_like_an_empty_upload(user_client, image):
    response = post_raw(user_client, image, sparse([]), content_type=MEDIA_TYPE)
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]
    assert_nothing_stored(image)


def test_compressed_nothing_is_refused_too(user_client, image):
    packed = zstandard.ZstdCompressor().compress(b"")
    response = post_raw(user_client, image, packed, HTTP_CONTENT_ENCODING="zstd")
    assert response.status_code == 400
    assert "0 bytes" in response.json()["detail"]
    assert_nothing_stored(image)
