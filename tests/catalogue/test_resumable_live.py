"""Resumable uploads over real HTTP against the live server: a connection cut mid-body at
any byte and resumed, every encoding, a second appender (409), an abandon mid-append."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import zstandard
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from accounts.services import token_create
from catalogue.models import ResumableUpload, Version
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.sparse import MEDIA_TYPE, encoded
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_upload_body import start_gunicorn  # noqa: F401 - a fixture

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


@pytest.fixture
def secret(user) -> str:
    return token_create(actor=user, user=user, name="live")[1]


def new_image(user):
    image = ImageFactory(owner=user)
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    return image


def request(live_server, secret, method, path, body=b"", **headers):
    address = urlsplit(live_server.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    conn.request(method, path, body, {"Authorization": f"Bearer {secret}", **headers})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), (json.loads(data) if data else None)


def create(live_server, secret, image, **headers) -> str:
    status, answer, _ = request(
        live_server, secret, "POST", f"/api/image/{image.uuid}",
        **{"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0",
           "Content-Type": "application/octet-stream", **headers},
    )  # fmt: skip
    assert status == 201
    return answer["Location"]


def open_patch(live_server, secret, where, offset, length, complete=True) -> socket.socket:
    address = urlsplit(live_server.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    head = (
        f"PATCH {where} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/partial-upload\r\n"
        f"Upload-Draft-Interop-Version: 8\r\nUpload-Offset: {offset}\r\n"
        f"Upload-Complete: {'?1' if complete else '?0'}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def answer_of(sock: socket.socket) -> tuple[int, bytes]:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def offset_of(live_server, secret, where) -> int:
    status, headers, _ = request(live_server, secret, "HEAD", where)
    assert status == 204
    return int(headers["Upload-Offset"])


def wait_for_offset(live_server, secret, where, wanted: int, seconds: float = 15) -> int:
    deadline = time.monotonic() + seconds
    while (offset := offset_of(live_server, secret, where)) != wanted:
        if time.monotonic() > deadline:
            return offset
        time.sleep(0.05)
    return offset


def _counted(image, token: str, cut: int) -> bool:
    """The upload's file counts in the quota as it takes on disk. Kept as sent, a cut after
    any byte leaves some; decoded as it arrives, a sparse image's first bytes may be all
    headers, or a block not whole yet: held in the checkpoint, nothing on disk."""
    upload = ResumableUpload.objects.get(token=token)
    on_disk = get_storage().resumable_part(image.uuid, token).path.stat().st_blocks * 512
    return upload.stored == on_disk and bool(on_disk or not cut or upload.decoded is not None)


def cut_then_resume(live_server, secret, image, wire: bytes, cut: int, **create_headers) -> dict:
    """Send all of ``wire`` in one PATCH but cut the connection after ``cut`` bytes; check
    the server kept exactly those, then send the rest from there."""
    where = create(live_server, secret, image, **create_headers)
    sock = open_patch(live_server, secret, where, 0, len(wire))
    sock.sendall(wire[:cut])
    sock.close()  # the cut: the server reads `cut` bytes, then the end of the stream
    assert wait_for_offset(live_server, secret, where, cut) == cut
    token = where.rsplit("/", 1)[1]
    deadline = time.monotonic() + 15  # the cut request ends: its bytes on disk count in the quota
    while not _counted(image, token, cut):
        upload = ResumableUpload.objects.get(token=token)
        assert time.monotonic() < deadline, (
            f"the cut upload's bytes are not in the quota: it counts {upload.stored}, cut at "
            f"{cut}, decoded {upload.decoded is not None}"
        )
        time.sleep(0.05)
    for _ in range(100):  # as a client does: while the cut request is still ending, 409
        status, headers, version = request(
            live_server, secret, "PATCH", where, wire[cut:],
            **{"Content-Type": "application/partial-upload", "Upload-Offset": str(cut),
               "Upload-Complete": "?1", "Upload-Draft-Interop-Version": "8"},
        )  # fmt: skip
        if status != 409:
            break
        assert headers["Upload-Offset"] == str(cut)
        time.sleep(0.1)
    assert status == 201, version
    assert headers["Upload-Complete"] == "?1"
    return version


def disk() -> bytes:
    return os.urandom(900 * 1024) + bytes(3 * MiB) + os.urandom(5 * BLOCK)


WIRES = {
    "none": (lambda data: data, {}),
    "zstd": (
        lambda data: zstandard.ZstdCompressor(level=1).compress(data),
        {"Content-Encoding": "zstd"},
    ),
    "gzip": (lambda data: gzip.compress(data, 1), {"Content-Type": "application/gzip"}),
    "sparse": (lambda data: b"".join(encoded(data)), {"Content-Type": MEDIA_TYPE}),
}


@pytest.mark.parametrize("encoding", list(WIRES))
def test_a_cut_connection_resumes_from_the_exact_byte_in_every_encoding(
    live_server, user, secret, encoding
):
    image = new_image(user)
    data = disk()
    encode, headers = WIRES[encoding]
    wire = encode(data)
    cut = len(wire) // 2 + 4093  # no block, frame or chunk boundary
    version = cut_then_resume(live_server, secret, image, wire, cut, **headers)
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert get_storage().version_path(image.uuid, version["version"], "none").read_bytes() == data


@hsettings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(encoding=st.sampled_from(["none", "sparse"]), fraction=st.floats(0.0, 1.0))
def test_wherever_the_connection_is_cut_the_resumed_version_is_the_file(
    live_server, user, secret, encoding, fraction
):
    image = new_image(user)
    data = os.urandom(5 * BLOCK) + bytes(40 * BLOCK) + os.urandom(3 * BLOCK)
    encode, headers = WIRES[encoding]
    wire = encode(data)
    cut = int(fraction * (len(wire) - 1))
    version = cut_then_resume(live_server, secret, image, wire, cut, **headers)
    assert get_storage().version_path(image.uuid, version["version"], "none").read_bytes() == data


def start_appending(live_server, secret, where, body_length: int, complete: bool):
    """A PATCH that has sent 2 MiB and whose first bytes the server acknowledged: it holds
    the upload. (The server acknowledges at its checkpoints: on a link this slow, at the first
    chunk it reads after a second; where its reads end depends on the server.)"""
    sock = open_patch(live_server, secret, where, 0, body_length, complete)
    sock.sendall(os.urandom(MiB))
    time.sleep(1.1)
    sock.sendall(os.urandom(MiB))
    deadline = time.monotonic() + 15
    while offset_of(live_server, secret, where) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < offset_of(live_server, secret, where) <= 2 * MiB
    return sock


def test_a_second_appender_gets_409_while_the_first_goes_on(live_server, user, secret):
    image = new_image(user)
    where = create(live_server, secret, image)
    first = start_appending(live_server, secret, where, 3 * MiB, complete=True)
    offset = offset_of(live_server, secret, where)
    status, headers, body = request(
        live_server, secret, "PATCH", where, b"x" * MiB,
        **{"Content-Type": "application/partial-upload", "Upload-Offset": str(offset),
           "Upload-Complete": "?1"},
    )  # fmt: skip
    assert status == 409
    assert (headers["Retry-After"], headers["Upload-Offset"]) == ("5", str(offset))
    assert "Another request is appending" in body["detail"]
    first.sendall(os.urandom(MiB))
    status, answer = answer_of(first)
    assert status == 201, answer
    assert json.loads(answer)["size"] == 3 * MiB
    assert offset_of(live_server, secret, where) == 3 * MiB


def test_abandoning_during_an_append_stops_it_and_leaves_nothing(live_server, user, secret):
    image = new_image(user)
    where = create(live_server, secret, image)
    appender = start_appending(live_server, secret, where, 4 * MiB, complete=False)
    status, _, _ = request(live_server, secret, "DELETE", where)
    assert status == 204
    assert request(live_server, secret, "HEAD", where)[0] == 404
    time.sleep(1.1)
    appender.sendall(os.urandom(2 * MiB))  # its next checkpoint finds the upload gone
    status, answer = answer_of(appender)
    assert status == 404
    assert "abandoned" in json.loads(answer)["detail"]
    directory = get_storage().image_dir(image.uuid)
    assert not [p for p in directory.iterdir() if p.name.startswith(".upload-")]
    assert not ResumableUpload.objects.exists()
    assert Version.objects.filter(image=image).count() == 1


# --- The same under gunicorn, as in production (its socket reads, its threads) -------------


@pytest.fixture
def gunicorn(request) -> SimpleNamespace:
    return SimpleNamespace(url=request.getfixturevalue("start_gunicorn")())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("encoding", ["none", "zstd", "sparse"])
def test_under_gunicorn_a_cut_connection_resumes_from_the_exact_byte(
    gunicorn, user, secret, encoding
):
    image = new_image(user)
    data = disk()
    encode, headers = WIRES[encoding]
    wire = encode(data)
    version = cut_then_resume(gunicorn, secret, image, wire, len(wire) // 3 + 1, **headers)
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert get_storage().version_path(image.uuid, version["version"], "none").read_bytes() == data


@pytest.mark.django_db(transaction=True)
def test_under_gunicorn_a_second_appender_gets_409(gunicorn, user, secret):
    image = new_image(user)
    where = create(gunicorn, secret, image)
    first = start_appending(gunicorn, secret, where, 3 * MiB, complete=True)
    offset = offset_of(gunicorn, secret, where)
    status, headers, _ = request(
        gunicorn, secret, "PATCH", where, b"x" * MiB,
        **{"Content-Type": "application/partial-upload", "Upload-Offset": str(offset),
           "Upload-Complete": "?1"},
    )  # fmt: skip
    assert (status, headers["Upload-Offset"]) == (409, str(offset))
    first.sendall(os.urandom(MiB))
    status, answer = answer_of(first)
    assert status == 201, answer
