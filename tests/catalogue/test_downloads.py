"""Downloading versions: whole, by range, resumed with the real curl, decoded on the fly."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import zstandard
from django.db import connection

from accounts.models import Role
from catalogue.models import Compression, ImageType
from catalogue.services.compression import version_compress
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.celery_worker import database_url
from tests.conftest import client_for
from tests.gunicorn import gunicorn

CURL = shutil.which("curl")
CONTENT = bytes(range(256)) * 4096 + os.urandom(100_000)  # 1 MiB of a pattern, then noise


def url(version, suffix: str | None = None) -> str:
    return f"/api/image/{version.image.uuid}/{suffix if suffix is not None else version.number}"


def digest_field(content: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(content).digest()).decode()}:"


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def status_of(client, path: str) -> int:
    """The status of a GET, its streamed file (if any) read to the end and closed."""
    response = client.get(path)
    if response.streaming:
        body(response)  # the test client closes the file at the end of the stream
    return response.status_code


@pytest.fixture
def image(user):
    return ImageFactory(owner=user, name="debian")


@pytest.fixture
def version(image):
    return VersionFactory(image=image, number=0, content=CONTENT)


@pytest.fixture
def compressed(django_capture_on_commit_callbacks):
    """Make a version of an image stored in a compression, the way the job stores it."""

    def make(image, content: bytes, compression: str):
        image.compression = compression
        image.save(update_fields=["compression"])
        version = VersionFactory(image=image, number=image.versions.count(), content=content)
        with django_capture_on_commit_callbacks(execute=True):
            version_compress(version_id=version.pk)
        version.refresh_from_db()
        assert version.stored_compression == compression
        return version

    return make


# --- Whole files ------------------------------------------------------------------


@pytest.mark.django_db
def test_it_sends_the_latest_version_with_its_size_tag_digests_and_name(user_client, image):
    VersionFactory(image=image, number=0, content=b"old" * 1000)
    latest = VersionFactory(image=image, number=1, content=CONTENT)

    response = user_client.get(url(latest, "latest"))

    assert response.status_code == 200
    assert body(response) == CONTENT
    assert response["Content-Length"] == str(len(CONTENT))
    assert response["Content-Type"] == "application/octet-stream"
    assert response["ETag"] == f'"{hashlib.sha256(CONTENT).hexdigest()}"'
    assert response["Accept-Ranges"] == "bytes"
    assert response["Repr-Digest"] == digest_field(CONTENT)
    assert response["Content-Digest"] == digest_field(CONTENT)
    assert response["Content-Disposition"] == 'attachment; filename="debian-v1.img"'
    assert response["Content-Location"] == url(latest)


@pytest.mark.django_db
def test_it_sends_the_numbered_version_asked_for(user_client, image):
    first = VersionFactory(image=image, number=0, content=b"first" * 100)
    VersionFactory(image=image, number=1, content=b"second" * 100)

    response = user_client.get(url(first))

    assert response.status_code == 200
    assert body(response) == b"first" * 100


@pytest.mark.django_db
def test_it_sends_the_holes_of_a_sparse_version_as_zeros(user_client, image, disk_root):
    from catalogue.storage import get_storage

    stored = get_storage().create_sparse(image.uuid, 0, 3 * 1024 * 1024)
    image.versions.create(
        number=0,
        size=stored.size,
        sha256=hashlib.sha256(bytes(stored.size)).hexdigest(),
        stored_size=stored.allocated,
    )

    response = user_client.get(f"/api/image/{image.uuid}/0")

    assert response.status_code == 200
    assert body(response) == bytes(3 * 1024 * 1024)


@pytest.mark.django_db
def test_head_answers_the_headers_without_the_bytes(user_client, version):
    response = user_client.head(url(version))

    assert response.status_code == 200
    assert response.content == b""
    assert response["Content-Length"] == str(len(CONTENT))
    assert response["ETag"] == f'"{version.sha256}"'


@pytest.mark.django_db
def test_a_matching_if_none_match_answers_304(user_client, version):
    response = user_client.get(url(version), HTTP_IF_NONE_MATCH=f'"{version.sha256}"')

    assert response.status_code == 304
    assert response["ETag"] == f'"{version.sha256}"'


@pytest.mark.django_db
def test_accept_octet_stream_is_served_not_refused(user_client, version):
    response = user_client.get(url(version), HTTP_ACCEPT="application/octet-stream")

    assert response.status_code == 200
    assert body(response) == CONTENT


# --- Ranges -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1000000-", 1_000_000, len(CONTENT) - 1),
        ("bytes=-5", len(CONTENT) - 5, len(CONTENT) - 1),
        ("bytes=5-99999999", 5, len(CONTENT) - 1),
        ("bytes=-99999999", 0, len(CONTENT) - 1),
    ],
)
def test_a_single_range_answers_206_with_those_bytes(user_client, version, header, start, end):
    response = user_client.get(url(version), HTTP_RANGE=header)

    assert response.status_code == 206
    assert body(response) == CONTENT[start : end + 1]
    assert response["Content-Range"] == f"bytes {start}-{end}/{len(CONTENT)}"
    assert response["Content-Length"] == str(end - start + 1)
    assert response["Repr-Digest"] == digest_field(CONTENT)
    # Content-Digest describes the bytes sent: only a range of everything has it.
    sent_everything = end - start + 1 == len(CONTENT)
    assert response.get("Content-Digest") == (digest_field(CONTENT) if sent_everything else None)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", [f"bytes={len(CONTENT)}-", "bytes=99999999-99999999", "bytes=-0"]
)
def test_a_range_past_the_end_answers_416_with_the_size(user_client, version, header):
    response = user_client.get(url(version), HTTP_RANGE=header)

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(CONTENT)}"
    assert "past the end" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "bytes=9-3", "bytes=x-y", "items=0-5", "bytes="]
)
def test_several_or_malformed_ranges_get_the_whole_file(user_client, version, header):
    response = user_client.get(url(version), HTTP_RANGE=header)

    assert response.status_code == 200
    assert body(response) == CONTENT


@pytest.mark.django_db
def test_if_range_with_the_current_etag_keeps_the_range(user_client, version):
    response = user_client.get(
        url(version), HTTP_RANGE="bytes=100-", HTTP_IF_RANGE=f'"{version.sha256}"'
    )

    assert response.status_code == 206
    assert body(response) == CONTENT[100:]


@pytest.mark.django_db
@pytest.mark.parametrize("if_range", ['"0123abcd"', 'W/"x"', "Sat, 01 Jan 2000 00:00:00 GMT"])
def test_if_range_with_a_stale_validator_sends_the_whole_file(user_client, version, if_range):
    response = user_client.get(url(version), HTTP_RANGE="bytes=100-", HTTP_IF_RANGE=if_range)

    assert response.status_code == 200
    assert body(response) == CONTENT


@pytest.mark.django_db
def test_head_with_a_range_answers_206_headers(user_client, version):
    response = user_client.head(url(version), HTTP_RANGE="bytes=0-9")

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 0-9/{len(CONTENT)}"
    assert response["Content-Length"] == "10"


# --- Compressed versions ----------------------------------------------------------


@pytest.mark.django_db
def test_a_zstd_version_is_sent_as_stored_with_its_suffix(user_client, image, compressed):
    version = compressed(image, CONTENT, Compression.ZSTD)

    response = user_client.get(url(version))
    sent = body(response)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zstd"
    assert response["Content-Disposition"] == 'attachment; filename="debian-v0.img.zst"'
    assert zstandard.ZstdDecompressor().decompressobj().decompress(sent) == CONTENT
    assert response["Content-Length"] == str(len(sent))
    assert response["ETag"] == f'"{version.sha256}.zstd.{len(sent)}"'
    assert response["BAAS-Raw-Digest"] == digest_field(CONTENT)
    assert response["BAAS-Raw-Size"] == str(len(CONTENT))
    assert "Repr-Digest" not in response  # the representation is the .zst file, not the image
    assert "Content-Digest" not in response


@pytest.mark.django_db
@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.GZIP])
def test_decompress_sends_the_raw_image_out_of_a_compressed_one(
    user_client, image, compression, compressed
):
    version = compressed(image, CONTENT, compression)

    response = user_client.get(url(version) + "?decompress=1")

    assert response.status_code == 200
    assert body(response) == CONTENT
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Length"] == str(len(CONTENT))
    assert response["ETag"] == f'"{version.sha256}"'
    assert response["Content-Digest"] == digest_field(CONTENT)
    assert response["Content-Disposition"] == 'attachment; filename="debian-v0.img"'


@pytest.mark.django_db
def test_decompress_honours_a_range_of_the_raw_bytes(user_client, image, compressed):
    version = compressed(image, CONTENT, Compression.ZSTD)

    response = user_client.get(url(version) + "?decompress=1", HTTP_RANGE="bytes=1000000-1000099")

    assert response.status_code == 206
    assert body(response) == CONTENT[1_000_000:1_000_100]
    assert response["Content-Range"] == f"bytes 1000000-1000099/{len(CONTENT)}"


@pytest.mark.django_db
def test_decompress_of_a_raw_version_is_the_file_itself(user_client, version):
    response = user_client.get(url(version) + "?decompress=true", HTTP_RANGE="bytes=-10")

    assert response.status_code == 206
    assert body(response) == CONTENT[-10:]


@pytest.mark.django_db
def test_a_nonsense_decompress_value_is_a_400(user_client, version):
    response = user_client.get(url(version) + "?decompress=perhaps")

    assert response.status_code == 400
    assert response.json()["detail"].startswith("decompress:")


# --- Who may download ---------------------------------------------------------------


@pytest.mark.django_db
def test_another_users_private_image_is_not_found(other_client, version):
    unknown = other_client.get("/api/image/00000000-0000-4000-8000-000000000000/0")
    for path in (url(version), url(version, "latest")):
        response = other_client.get(path)
        assert response.status_code == 404
        assert response.json() == unknown.json()  # never reveal that it exists


@pytest.mark.django_db
def test_every_signed_in_user_downloads_a_system_image(other_client, moderator):
    system = ImageFactory(owner=moderator, type=ImageType.SYSTEM)
    version = VersionFactory(image=system, number=0, content=b"system" * 10)

    response = other_client.get(url(version))

    assert response.status_code == 200
    assert body(response) == b"system" * 10


@pytest.mark.django_db
def test_administrators_and_assigned_moderators_download_private_images(admin_client_api, version):
    maintainer = UserFactory(role=Role.MODERATOR)
    version.image.maintainers.add(maintainer)

    assert status_of(admin_client_api, url(version)) == 200
    assert status_of(client_for(maintainer), url(version)) == 200
    assert status_of(client_for(UserFactory(role=Role.MODERATOR)), url(version)) == 404


@pytest.mark.django_db
def test_a_signed_in_session_downloads_too(client, user, version):
    client.force_login(user)

    response = client.get(url(version))

    assert response.status_code == 200
    assert body(response) == CONTENT


@pytest.mark.django_db
def test_anonymous_callers_must_authenticate(anon_client, version):
    response = anon_client.get(url(version))

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_unknown_images_and_versions_are_not_found(user_client, version):
    assert user_client.get(url(version, "7")).status_code == 404
    assert user_client.get(url(version, "9" * 30)).status_code == 404  # beyond any integer
    assert (
        user_client.get("/api/image/00000000-0000-4000-8000-000000000000/latest").status_code == 404
    )
    empty = ImageFactory(owner=version.image.owner)
    assert user_client.get(f"/api/image/{empty.uuid}/latest").status_code == 404


@pytest.mark.django_db
def test_a_malformed_uuid_is_a_400(user_client):
    response = user_client.get("/api/image/not-a-uuid/latest")

    assert response.status_code == 400
    assert "not a valid UUID" in response.json()["detail"]


@pytest.mark.django_db
def test_the_schema_describes_both_download_routes(user_client):
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    for path in ("/api/image/{image_uuid}/latest", "/api/image/{image_uuid}/{number}"):
        responses = schema["paths"][path]["get"]["responses"]
        assert responses["200"]["content"]["application/zstd"]["schema"]["format"] == "binary"
        assert "Content-Range" in responses["206"]["headers"]
        assert {"404", "416"} <= set(responses)


# --- Resuming with the real curl, over real HTTP ------------------------------------


def curl(*args: str, token: str) -> subprocess.CompletedProcess:
    """The real curl binary; prints the HTTP status on stdout."""
    return subprocess.run(
        [
            CURL,
            "--silent",
            "--show-error",
            "-H",
            f"Authorization: Bearer {token}",
            "-w",
            "%{http_code}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bearer(user) -> str:
    from accounts.services import token_create

    return token_create(actor=user, user=user, name="curl")[1]


@pytest.fixture
def big_version(transactional_db, user):
    """A 6 MiB version: bigger than the socket buffers between curl and the server."""
    image = ImageFactory(owner=user, name="big")
    return VersionFactory(image=image, number=0, content=os.urandom(6 * 1024 * 1024))


def stored_bytes(version) -> bytes:
    from catalogue.storage import get_storage

    with get_storage().open_read(version.image_id, version.number, "none") as file:
        return file.read()


def resume_and_compare(base_url: str, version, user, tmp_path: Path) -> None:
    """Fetch a part with -r, resume with -C -, then resume a complete file: all equal."""
    token = bearer(user)
    target = tmp_path / "download.img"
    address = f"{base_url}{url(version)}"
    expected = stored_bytes(version)

    part = curl("-r", "0-1048575", "-o", str(target), address, token=token)
    assert part.stdout == "206", part.stderr
    assert target.read_bytes() == expected[:1048576]

    resumed = curl("-C", "-", "-o", str(target), address, token=token)
    assert resumed.stdout == "206", resumed.stderr
    assert target.read_bytes() == expected

    again = curl("-C", "-", "-o", str(target), address, token=token)
    assert again.stdout == "416"
    assert target.read_bytes() == expected


@pytest.mark.skipif(CURL is None, reason="needs the curl binary")
def test_curl_resumes_a_broken_download(live_server, big_version, user, tmp_path):
    resume_and_compare(live_server.url, big_version, user, tmp_path)


@pytest.mark.skipif(CURL is None, reason="needs the curl binary")
def test_curl_resumes_after_being_killed_midway(live_server, big_version, user, tmp_path):
    token = bearer(user)
    target = tmp_path / "killed.img"
    address = f"{live_server.url}{url(big_version)}"
    # curl writes into a pipe we stop reading: it blocks midway, and is killed there.
    stalled = subprocess.Popen(
        [CURL, "--silent", "-H", f"Authorization: Bearer {token}", address],
        stdout=subprocess.PIPE,
    )
    target.write_bytes(stalled.stdout.read(1_000_000))
    stalled.send_signal(signal.SIGKILL)
    stalled.wait()
    stalled.stdout.close()
    got = target.stat().st_size
    assert 0 < got < len(stored_bytes(big_version))

    resumed = curl("-C", "-", "-o", str(target), address, token=token)

    assert resumed.stdout == "206", resumed.stderr
    assert target.read_bytes() == stored_bytes(big_version)


# --- The same under gunicorn, where the bytes go out with sendfile ---------------------


@pytest.fixture
def gunicorn_url(transactional_db, disk_root, tmp_path):
    """gunicorn (sync worker, sendfile on) serving the test database and image root."""
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "BAAS_DISK_ROOT": str(disk_root),
        "SENDFILE": "1",
    }
    with gunicorn(env, tmp_path / "gunicorn.log") as url:
        yield url


@pytest.mark.skipif(CURL is None, reason="needs the curl binary")
def test_gunicorn_sends_ranges_and_resumes_with_sendfile(gunicorn_url, big_version, user, tmp_path):
    token = bearer(user)
    address = f"{gunicorn_url}{url(big_version)}"
    expected = stored_bytes(big_version)

    middle = curl("-r", "3000000-3000099", "-o", str(tmp_path / "middle"), address, token=token)
    assert middle.stdout == "206", middle.stderr
    assert (tmp_path / "middle").read_bytes() == expected[3_000_000:3_000_100]

    resume_and_compare(gunicorn_url, big_version, user, tmp_path)
