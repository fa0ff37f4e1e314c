"""One HTTP/1.1 request whose body goes out with sendfile(2): an upload's bytes.

httpx carries every other request; an upload's body is sent here, straight
from the disk file to the socket where it can (``socket.sendfile``: no copy
through Python, the way ``cp`` moves bytes), with the small pieces of the
format between the data (sparse chunk headers, zstd frames) sent as they are.
The body is a list of :data:`Piece`\\ s so that a resumed upload can start at
any byte of it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from baas_cli import __version__
from baas_cli.errors import LocalError

# A piece of a body: bytes, or (file offset, length) of the file being sent.
Piece = bytes | tuple[int, int]
STEP = 8 << 20  # bytes handed to sendfile at once: the progress bar moves this often


def piece_length(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece[1]


def pieces_from(pieces: Iterable[Piece], offset: int) -> Iterable[Piece]:
    """The body from byte ``offset`` on: whole pieces skipped, the first one cut."""
    position = 0
    for piece in pieces:
        length = piece_length(piece)
        if position + length <= offset:
            position += length
            continue
        skip = max(0, offset - position)
        position += length
        if isinstance(piece, bytes):
            yield piece[skip:]
        else:
            yield (piece[0] + skip, piece[1] - skip)


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Sender:
    """Sends bodies to one server; counts what actually went out."""

    base_url: str
    token: str
    timeout: float = 600.0
    limit_rate: int = 0  # bytes per second, 0: as fast as the link goes
    on_sent: Callable[[int], None] | None = None
    sent: int = 0
    seconds_sending: float = 0.0  # the bodies going out
    seconds_waiting: float = 0.0  # from a body's last byte to the server's answer
    _started: float = field(default_factory=time.monotonic)

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        pieces: Iterable[Piece] = (),
        *,
        length: int | None,
        source: Any = None,
    ) -> Answer:
        """``method target`` with the body ``pieces`` (``length`` bytes, or chunked if None).

        ``source`` is the open file the ``(offset, length)`` pieces refer to.
        A server that answers early (an error) may close before the end: its
        answer is read all the same.
        """
        url = urllib.parse.urljoin(self.base_url + "/", target)
        parts = urllib.parse.urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
        all_headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": f"baas-cli/{__version__}",
            "Connection": "close",
            **headers,
        }
        if length is None:
            all_headers["Transfer-Encoding"] = "chunked"
        elif method != "HEAD":
            all_headers["Content-Length"] = str(length)
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        try:
            with _connect(parts, self.timeout) as sock:
                began = time.monotonic()
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for piece in pieces:
                        self._piece(sock, piece, source, chunked=length is None)
                    if length is None:
                        sock.sendall(b"0\r\n\r\n")
                sent = time.monotonic()
                answer = _answer(sock, method)
                self.seconds_sending += sent - began
                self.seconds_waiting += time.monotonic() - sent
                return answer
        except (OSError, http.client.HTTPException) as exc:
            raise Interrupted(f"The connection to {parts.netloc} broke: {exc}") from exc

    def _piece(self, sock: socket.socket, piece: Piece, source: Any, *, chunked: bool) -> None:
        length = piece_length(piece)
        if not length:
            return
        if chunked:
            sock.sendall(f"{length:x}\r\n".encode())
        if isinstance(piece, bytes):
            for start in range(0, length, self._step()):
                data = piece[start : start + self._step()]
                sock.sendall(data)
                self._count(len(data))
        else:
            offset, remaining = piece
            while remaining:
                step = min(self._step(), remaining)
                done = sock.sendfile(source, offset, step)
                if done != step:
                    raise LocalError("The file got shorter while it was sent: start again.")
                offset, remaining = offset + step, remaining - step
                self._count(step)
        if chunked:
            sock.sendall(b"\r\n")

    def _step(self) -> int:
        return min(STEP, max(64 << 10, self.limit_rate // 8)) if self.limit_rate else STEP

    def _count(self, amount: int) -> None:
        self.sent += amount
        if self.on_sent is not None:
            self.on_sent(amount)
        if self.limit_rate:
            ahead = self.sent / self.limit_rate - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)


class Interrupted(LocalError):
    """The connection broke mid-request: what arrived is for the server to say (HEAD)."""


def _connect(parts: urllib.parse.SplitResult, timeout: float) -> socket.socket:
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LocalError(f"Not an http(s) URL: {parts.geturl()!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=timeout)
    if parts.scheme == "https":
        context = ssl.create_default_context()
        if os.environ.get("SSL_CERT_FILE"):
            context.load_verify_locations(os.environ["SSL_CERT_FILE"])
        sock = context.wrap_socket(sock, server_hostname=parts.hostname)
    return sock


def _answer(sock: socket.socket, method: str) -> Answer:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Answer(response.status, response.reason, headers, body)
