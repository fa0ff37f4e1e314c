"""Reading an upload's body straight from gunicorn's socket: over a real socket pair, against
the pinned gunicorn's own parser (a contract that fails loudly when gunicorn changes), and
end to end beside the plain WSGI stream that every other server gets."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import gunicorn
import pytest
from django.db import connection
from gunicorn.config import Config
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http.wsgi import create

from accounts.services import token_create
from catalogue.apis.uploads import GunicornSocketBody
from catalogue.models import Version
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory
from tests.celery_worker import ROOT, database_url
from tests.gunicorn import free_port

NEXT_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def _gunicorn_body(sock: socket.socket, length: int, already: bytes = b"") -> Body:
    unreader = SocketUnreader(sock)
    unreader.unread(already)  # what gunicorn received together with the headers
    return Body(LengthReader(unreader, length))


def _send(sock: socket.socket, data: bytes) -> threading.Thread:
    thread = threading.Thread(target=sock.sendall, args=(data,))
    thread.start()
    return thread


def test_it_reads_the_exact_body_and_leaves_the_next_request_to_gunicorn(pair):
    server, client = pair
    body = os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(12345)
    head, rest = body[:5000], body[5000:]
    sender = _send(client, rest + NEXT_REQUEST)
    wsgi_input = _gunicorn_body(server, len(body), already=head)
    reader = GunicornSocketBody.wrap(wsgi_input)
    assert reader is not None
    chunks = []
    while data := reader.read(1 << 20):
        chunks.append(data)
    sender.join()
    assert b"".join(chunks) == body
    assert max(map(len, chunks)) <= 1 << 20
    assert wsgi_input.reader.length == 0
    assert wsgi_input.read(8192) == b""  # gunicorn sees the body as fully read
    assert SocketUnreader.read(wsgi_input.reader.unreader, len(NEXT_REQUEST)) == NEXT_REQUEST


def test_it_takes_over_after_gunicorn_buffered_part_of_the_body(pair):
    server, client = pair
    body = os.urandom(300_000)
    sender = _send(client, body + NEXT_REQUEST)
    wsgi_input = _gunicorn_body(server, len(body))
    first = wsgi_input.read(1000)  # gunicorn reads ahead into its own buffers
    reader = GunicornSocketBody.wrap(wsgi_input)
    rest = b"".join(iter(lambda: reader.read(65536), b""))
    sender.join()
    assert first + rest == body
    assert wsgi_input.reader.length == 0


def test_a_client_gone_midway_ends_the_body_short(pair):
    server, client = pair
    client.sendall(b"x" * 1000)
    client.close()
    wsgi_input = _gunicorn_body(server, 5000)
    reader = GunicornSocketBody.wrap(wsgi_input)
    assert reader.read(4096) == b"x" * 1000
    assert reader.read(4096) == b""


def test_other_streams_keep_the_wsgi_path(pair):
    server, _client = pair
    server.settimeout(5)  # a socket with a timeout: MSG_WAITALL could return short
    assert GunicornSocketBody.wrap(_gunicorn_body(server, 10)) is None
    assert GunicornSocketBody.wrap(object()) is None


# --- The contract with gunicorn, and the plain WSGI path beside it ------------------------


def _pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        pinned, _, version = line.partition("==")
        if pinned.strip().lower() == name:
            return version.strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_gunicorn_is_the_version_whose_private_classes_the_socket_reads_follow():
    assert gunicorn.__version__ == _pinned("gunicorn"), (
        f"gunicorn {gunicorn.__version__} is installed, {_pinned('gunicorn')} is pinned: "
        "GunicornSocketBody (catalogue/apis/uploads.py) reads gunicorn's Body, LengthReader "
        "and SocketUnreader. Check it against the new version (these tests), then pin it."
    )


def test_the_body_gunicorn_hands_the_application_is_read_from_its_socket(pair):
    server, client = pair
    body = os.urandom(2 << 20) + bytes(1 << 20)
    head = f"POST /api/image/x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    sender = _send(client, head.encode() + body + NEXT_REQUEST)
    cfg = Config()
    parser = RequestParser(cfg, server, ("127.0.0.1", 40000))
    _response, environ = create(next(parser), server, ("127.0.0.1", 40000), ("x", 80), cfg)
    reader = GunicornSocketBody.wrap(environ["wsgi.input"])
    assert reader is not None, (
        "GunicornSocketBody no longer recognises gunicorn's wsgi.input: uploads fall back to "
        "the plain WSGI stream (correct, but slower). Update it for this gunicorn."
    )
    received = b"".join(iter(lambda: reader.read(1 << 20), b""))
    sender.join()
    assert received == body
    assert next(parser).path == "/healthz"  # gunicorn finds the next request where it starts


@pytest.fixture
def start_gunicorn(transactional_db, disk_root, tmp_path):
    """Starts gunicorn as in production (gthread), serving the test database and image root,
    with extra environment; stops it at the end of the test."""
    processes = []

    def start(**extra: str) -> str:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(connection.settings_dict),
            "BAAS_DISK_ROOT": str(disk_root),
            "BAAS_VAR_DIR": str(tmp_path / f"var-{port}"),
            "BAAS_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": "1",
            "BAAS_THREADS": "2",
            **extra,
        }
        log = tmp_path / f"gunicorn-{port}.log"
        with log.open("w") as output:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "baas_site.wsgi"],
                    cwd=ROOT,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_for_port(port, processes[-1], log)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(log.read_text())


def _upload(base: str, image, secret: str, body: bytes) -> dict:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    request = urllib.request.Request(  # noqa: S310 - a loopback URL of our own
        f"{base}/api/image/{image.uuid}",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/octet-stream",
            "Content-Digest": f"sha-256=:{digest}:",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
        assert response.status == 201
        return json.loads(response.read())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("server", ["gunicorn", "gunicorn, socket reads off", "django"])
def test_an_upload_is_stored_alike_from_gunicorn_s_socket_and_from_the_plain_wsgi_stream(
    server, request, user
):
    """gunicorn's socket read straight (the fast path); the plain WSGI stream, which every
    other server gets: gunicorn's own with BAAS_UPLOAD_READ_SOCKET off, and Django's."""
    if server == "django":
        base = request.getfixturevalue("live_server").url
    else:
        off = {"BAAS_UPLOAD_READ_SOCKET": "false"} if "off" in server else {}
        base = request.getfixturevalue("start_gunicorn")(**off)
    image = ImageFactory(owner=user)
    secret = token_create(actor=user, user=user, name=server)[1]
    body = os.urandom(3 << 20) + bytes(2 << 20) + os.urandom(12345)
    answer = _upload(base, image, secret, body)
    assert (answer["size"], answer["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    version = Version.objects.get(image=image, number=answer["version"])
    stored = get_storage().version_path(image.uuid, version.number, version.stored_compression)
    assert stored.read_bytes() == body
