"""Reading an upload's body straight from gunicorn's socket, over a real socket pair."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader

from catalogue.apis.uploads import GunicornSocketBody

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
