"""Uploads over real HTTP against the live server: curl, concurrent sockets, a client
that goes away, and a really full disk."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import zstandard

from accounts.services import token_create
from catalogue.models import Image, Version
from catalogue.storage import get_storage
from catalogue.tasks import purge_stale_uploads_task
from diskimage import BLOCK
from tests.catalogue.factories import ImageFactory
from tests.catalogue.filesystems import tool
from tests.conftest import client_for

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 16 * MiB


@pytest.fixture
def secret(user) -> str:
    return token_create(actor=user, user=user, name="live")[1]


def curl(*args: str, secret: str) -> dict:
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {secret}", *args],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_the_designs_sequence_end_to_end_over_http(live_server, user, secret, tmp_path):
    """Create → UUID → upload (form) → version 1 → upload (curl -T, zstd) → version 2."""
    created = curl(
        "-H", "Content-Type: application/json",
        "-d", json.dumps({"name": "debian", "target_disk": "/dev/nvme0n1"}),
        f"{live_server.url}/api/user/{user.username}/image",
        secret=secret,
    )  # fmt: skip
    uuid = created["uuid"]
    assert created["versions"][0]["number"] == 0
    assert created["versions"][0]["size"] == 16 * MiB
    assert get_storage().stat(uuid, 0, "none").allocated == 0

    disk = tmp_path / "disk.img"
    data = os.urandom(3 * MiB) + bytes(20 * MiB) + os.urandom(BLOCK + 7)
    disk.write_bytes(data)
    one = curl("-F", f"file=@{disk}", f"{live_server.url}/api/image/{uuid}", secret=secret)
    assert one["version"] == 1
    assert one["sha256"] == hashlib.sha256(data).hexdigest()
    stored = get_storage().version_path(uuid, 1, "none")
    assert stored.read_bytes() == data
    assert stored.stat().st_blocks * 512 <= 3 * MiB + 3 * BLOCK  # the zeros stayed holes

    packed = tmp_path / "disk.img.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(data))
    two = curl(
        "-T", str(packed), "-H", "Content-Encoding: zstd",
        f"{live_server.url}/api/image/{uuid}",
        secret=secret,
    )  # fmt: skip
    assert (two["version"], two["sha256"], two["size"]) == (2, one["sha256"], len(data))
    versions = curl(f"{live_server.url}/api/image/{uuid}/versions", secret=secret)["results"]
    assert [v["number"] for v in versions] == [0, 1, 2]


def open_upload(live_server, image, secret: str, length: int) -> socket.socket:
    address = urlsplit(live_server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    head = (
        f"POST /api/image/{image.uuid} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def response_of(sock: socket.socket) -> tuple[int, dict]:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_two_concurrent_uploads_get_two_consecutive_numbers(live_server, user, secret):
    image = ImageFactory(owner=user)
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    bodies = [os.urandom(4 * MiB), os.urandom(4 * MiB)]
    socks = [open_upload(live_server, image, secret, len(body)) for body in bodies]
    for sock, body in zip(socks, bodies, strict=True):  # both are mid-upload at once
        sock.sendall(body[: 2 * MiB])
    for sock, body in zip(socks, bodies, strict=True):
        sock.sendall(body[2 * MiB :])
    answers = [response_of(sock) for sock in socks]
    assert [status for status, _ in answers] == [201, 201]
    numbers = sorted(answer["version"] for _, answer in answers)
    assert numbers == [1, 2]
    for (_, answer), body in zip(answers, bodies, strict=True):
        path = get_storage().version_path(image.uuid, answer["version"], "none")
        assert path.read_bytes() == body
    assert Version.objects.filter(image=image).count() == 3


def wait_until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_client_gone_mid_upload_leaves_no_version_and_no_file(live_server, user, secret):
    image = ImageFactory(owner=user)
    directory = get_storage().image_dir(image.uuid)
    sock = open_upload(live_server, image, secret, 64 * MiB)
    sock.sendall(os.urandom(3 * MiB))
    assert wait_until(lambda: directory.exists() and any(directory.iterdir()))  # being written
    sock.close()
    assert wait_until(lambda: not any(directory.iterdir()))
    assert not Version.objects.filter(image=image).exists()
    assert purge_stale_uploads_task() == 0
    assert list(directory.iterdir()) == []


# --- A really full disk ---------------------------------------------------------------------


@pytest.fixture(params=["tmpfs", "ext4"])
def tiny_disk(request, settings, tmp_path) -> Path:
    """An 8 MiB image root, unmounted afterwards: a tmpfs, or an ext4 made in a file (where
    versions are written past the page cache, and the disk fills in a direct write)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    root = tmp_path / "tiny"
    root.mkdir()
    if request.param == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], check=True)
    else:
        backing = tmp_path / "tiny.ext4"
        with backing.open("wb") as handle:
            handle.truncate(8 * MiB)
        subprocess.run([tool("mkfs.ext4"), "-q", "-F", backing], check=True)
        subprocess.run(["mount", "-o", "loop", backing, root], check=True)
    settings.BAAS_DISK_ROOT = root
    yield root
    subprocess.run(["umount", str(root)], check=True)


@pytest.mark.root
def test_a_full_disk_answers_507_and_keeps_nothing(tiny_disk, user):
    client = client_for(user)
    created = client.post(f"/api/user/{user.username}/image", {"name": "big"}, format="json")
    assert created.status_code == 201
    image = Image.objects.get(pk=created.json()["uuid"])
    before = os.statvfs(tiny_disk)
    response = client.generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(12 * MiB), "application/octet-stream"
    )
    assert response.status_code == 507
    assert "full" in response.json()["detail"]
    assert not Version.objects.filter(image=image, number__gt=0).exists()
    names = sorted(p.name for p in get_storage().image_dir(image.uuid).iterdir())
    assert names == ["0.img", "0.map.json"]  # version 0 and its (empty) data map, nothing more
    assert os.statvfs(tiny_disk).f_bfree == before.f_bfree  # every block given back
    small = client.generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(MiB), "application/octet-stream"
    )
    assert small.status_code == 201
    assert small.json()["version"] == 1
