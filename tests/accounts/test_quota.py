"""Per-user storage quotas: set by administrators, enforced while an upload streams (413 up
front from Content-Length, or midway as the bytes land on disk), with nothing stored."""

from __future__ import annotations

import json
import os
import select
import socket
from urllib.parse import urlsplit

import pytest
import zstandard

from accounts.models import AuditEvent
from accounts.services import token_create
from catalogue.models import Version
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.conftest import allocated, client_for

MiB = 1 << 20


def on_disk(image) -> int:
    return allocated(image)


# --- Who sets it ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_administrator_sets_and_clears_a_users_quota(admin_client_api, user):
    url = f"/api/user/{user.username}"
    response = admin_client_api.patch(url, {"storage_quota": 10 * 1024**3}, format="json")
    assert (response.status_code, response.json()["storage_quota"]) == (200, 10 * 1024**3)
    user.refresh_from_db()
    assert user.storage_quota == 10 * 1024**3
    event = AuditEvent.objects.get(action="user.quota", target_id=str(user.pk))
    assert event.data == {"old": None, "new": 10 * 1024**3}
    cleared = admin_client_api.patch(url, {"storage_quota": None}, format="json")
    assert cleared.json()["storage_quota"] is None


@pytest.mark.django_db
def test_users_cannot_raise_their_own_quota(user_client, user):
    user.storage_quota = MiB
    user.save()
    url = f"/api/user/{user.username}"
    response = user_client.patch(url, {"storage_quota": 1024**4}, format="json")
    assert response.status_code == 403
    assert "administrators" in response.json()["detail"]
    user.refresh_from_db()
    assert user.storage_quota == MiB
    unchanged = user_client.patch(url, {"storage_quota": MiB, "name": "Me"}, format="json")
    assert unchanged.status_code == 200  # sending it back unchanged is no change


@pytest.mark.django_db
def test_a_quota_is_a_number_of_bytes(admin_client_api, user):
    response = admin_client_api.patch(
        f"/api/user/{user.username}", {"storage_quota": -1}, format="json"
    )
    assert response.status_code == 400


@pytest.mark.django_db
def test_the_usage_shows_the_quota(user_client, user):
    user.storage_quota = 5 * MiB
    user.save()
    body = user_client.get(f"/api/user/{user.username}/usage").json()
    assert (body["used"], body["quota"]) == (0, 5 * MiB)


# --- Enforced during uploads (through the test client) -----------------------------------------


@pytest.fixture
def full_user(user):
    """``user`` with 3 MiB stored and a quota of 4 MiB: 1 MiB left."""
    image = ImageFactory(owner=user)
    VersionFactory(image=image, number=0, content=os.urandom(3 * MiB))
    user.storage_quota = on_disk(image) + MiB
    user.save()
    return user


@pytest.mark.django_db
def test_an_upload_within_the_quota_is_stored(full_user):
    image = ImageFactory(owner=full_user)
    response = client_for(full_user).generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(MiB // 2), "application/octet-stream"
    )
    assert response.status_code == 201


@pytest.mark.django_db
def test_an_upload_too_large_for_the_quota_is_413_with_a_clear_message(full_user):
    image = ImageFactory(owner=full_user)
    response = client_for(full_user).generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(2 * MiB), "application/octet-stream"
    )
    assert response.status_code == 413
    message = response.json()["detail"]
    assert message.startswith("Storage quota of 0.00 GiB exceeded: 0.00 GiB used")
    assert "Nothing was stored" in message
    assert not Version.objects.filter(image=image).exists()
    assert not get_storage().image_dir(image.uuid).exists()


@pytest.mark.django_db
def test_the_owner_is_charged_whoever_uploads(full_user, administrator):
    image = ImageFactory(owner=full_user)
    response = client_for(administrator).generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(2 * MiB), "application/octet-stream"
    )
    assert response.status_code == 413


@pytest.mark.django_db
def test_holes_do_not_count_against_the_quota(full_user):
    image = ImageFactory(owner=full_user)
    body = zstandard.ZstdCompressor().compress(bytes(64 * MiB))  # a sparse 64 MiB disk
    response = client_for(full_user).generic(
        "POST", f"/api/image/{image.uuid}", body, "application/zstd"
    )
    assert (response.status_code, response.json()["size"]) == (201, 64 * MiB)
    assert on_disk(image) == 0


# --- Enforced during real HTTP uploads ---------------------------------------------------------


def open_upload(live_server, image, secret: str, length: int, content_type: str):
    address = urlsplit(live_server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    head = (
        f"POST /api/image/{image.uuid} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """The response, read by its Content-Length: the server may still wait for our body."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = dict(
        line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
    )
    length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def nothing_stored(image) -> bool:
    directory = get_storage().image_dir(image.uuid)
    leftovers = list(directory.iterdir()) if directory.exists() else []
    return leftovers == [] and not Version.objects.filter(image=image).exists()


def test_413_up_front_from_content_length_before_a_byte_is_sent(live_server, full_user):
    image = ImageFactory(owner=full_user)
    secret = token_create(actor=full_user, user=full_user, name="live")[1]
    sock = open_upload(live_server, image, secret, 2 * MiB, "application/octet-stream")
    status, body = read_response(sock)  # no byte of the body sent
    sock.close()
    assert status == 413
    assert body["detail"].startswith("Storage quota of ")
    assert f"needs 0.00 GiB ({2 * MiB} bytes)" in body["detail"]
    assert nothing_stored(image)


def compressible_disk(size: int) -> bytes:
    """Data (no holes) that zstd packs about thirty to one: 128 random bytes per 4 KiB block."""
    pattern = b"BAAS" * 992
    return b"".join(os.urandom(128) + pattern for _ in range(size // 4096))


def test_413_midway_as_the_bytes_land_on_disk_with_nothing_stored(live_server, full_user):
    """The body is small enough to pass the up-front check, but unpacks past the quota.

    The server reads the body 1 MiB at a time: the 413 comes after the first.
    """
    full_user.storage_quota += 3 * MiB  # 4 MiB left
    full_user.save()
    image = ImageFactory(owner=full_user)
    secret = token_create(actor=full_user, user=full_user, name="live")[1]
    body = zstandard.ZstdCompressor().compress(compressible_disk(96 * MiB))
    assert 2 * MiB < len(body) < 4 * MiB  # what Content-Length announces fits in what is left
    sock = open_upload(live_server, image, secret, len(body), "application/zstd")
    sent = 0
    piece = 64 * 1024
    while sent < len(body) and not readable(sock):
        sock.sendall(body[sent : sent + piece])
        sent += piece
        select.select([sock], [], [], 0.02)
    assert sent < len(body), "the answer came only after the whole body"
    sock.shutdown(socket.SHUT_WR)
    status, answer = read_response(sock)
    sock.close()
    assert status == 413
    assert answer["detail"].startswith("Storage quota of ")
    assert "Nothing was stored" in answer["detail"]
    assert nothing_stored(image)
