"""Real HTTP servers on loopback for the agent's tests.

- :class:`Nginx`: Debian's nginx serving a directory (ranges, strong ETags, If-Range),
  with an access log of the Range headers it saw.
- :class:`CuttingProxy`: a TCP proxy in front of it that breaks the first
  answers after N bytes — by closing the connection, or by stalling it.
- :class:`FakeBaas`: the agent's side of the protocol in miniature, enough to
  run the whole agent against; the real server's end-to-end tests come later.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import zstandard

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print the tracebacks of broken requests."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$request_uri $status "$http_range" "$http_if_range" $body_bytes_sent';
    access_log {dir}/access.log ranges;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class Nginx:
    """nginx as a subprocess serving ``root`` on a free loopback port."""

    def __init__(self, root: Path, workdir: Path) -> None:
        if not os.access(NGINX, os.X_OK):
            pytest.skip("nginx is not installed (apt-get install nginx)")
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, port=self.port, root=root))
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[str]:
        path = self.workdir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class CuttingProxy:
    """Forwards loopback TCP to ``upstream``, breaking the first ``cuts`` answers.

    Each broken answer carries ``after`` bytes (headers included) and then the
    connection is closed (``mode="close"``) or left silent (``mode="stall"``,
    for the client's timeout to find).
    """

    def __init__(self, upstream: int, *, after: int, cuts: int = 1, mode: str = "close") -> None:
        self.upstream = upstream
        self.after = after
        self.cuts = cuts
        self.mode = mode
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stalled: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.after if self.connections <= self.cuts else None
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: limit - sent])
                    self._break(source, sink)
                    return
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            _close(sock)

    def _break(self, source: socket.socket, sink: socket.socket) -> None:
        _close(source)
        if self.mode == "stall":
            self._stalled.append(sink)  # open and silent until the proxy closes
        else:
            _close(sink)

    def close(self) -> None:
        _close(self._server)
        for sock in self._stalled:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# -- a miniature BAAS --------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FakeBaas:
    """The server side of docs/agent-protocol.md, in memory, for tests.

    ``files`` maps URL paths to stored files (served with single ranges, a
    strong ETag and If-Range); ``cut_after`` breaks the first file answer
    (for ``cut_path``, if set) after that many body bytes. Uploads are
    decoded (zstd), checked against their Content-Digest and kept in
    ``uploads``; one that names its disk (``?disk=``) is matched against the sync
    entry of that disk, as the server does (409 for a disk no entry names).
    """

    instructions: dict[str, Any] = field(default_factory=lambda: {"sync": [], "write": []})
    files: dict[str, Path] = field(default_factory=dict)
    boot_token: str = "boot-token"
    deployment_token: str = "deployment-token"
    cut_after: int | None = None
    cut_path: str | None = None  # cut only the answer for this path (else the first file)
    refuse_chunked: bool = False  # answer 411, as Django's development server must
    gone_after_progress: int | None = None  # cancelled: 410 to everything after N reports
    progress_failures: int = 0  # answer this many progress reports with 503 first
    checked_in: bool = False
    instructions_at_checkin: bool = False  # the check-in's answer holds the instructions
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)  # body bytes announced, per path
    # A data stream's pieces (offset, length) per map range, by path: ?ranges= picks some.
    pieces: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    selections: list[str] = field(default_factory=list)  # the ?ranges= asked, in order

    def start(self) -> FakeBaas:
        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.baas = self  # type: ignore[attr-defined]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeBaas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self, path: str) -> list[dict[str, str]]:
        return [headers for method, p, headers in self.requests if method == "GET" and p == path]


class Handler(BaseHTTPRequestHandler):
    """Serves one FakeBaas (``self.server.baas``)."""

    @property
    def baas(self) -> FakeBaas:
        return self.server.baas  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        expected = f"Bearer {self.baas.deployment_token}"
        if self.headers.get("Authorization") != expected:
            self._json(401, {"detail": "Invalid token."})
            return False
        gone = self.baas.gone_after_progress
        if gone is not None and len(self.baas.progress) >= gone:
            self._json(410, {"detail": "Deployment #42 was cancelled."})
            return False
        return True

    def do_GET(self) -> None:
        self.baas.requests.append(("GET", self.path, dict(self.headers)))
        if not self._authorized():
            return
        path, _, query = self.path.partition("?")
        selected = query.startswith("ranges=") and path in self.baas.pieces
        if self.path == "/api/agent/instructions":
            self._json(200, {"deployment": 42, **self.baas.instructions})
        elif selected:  # ?ranges=1,4-6: those pieces of the file, in order
            self._serve_selection(path, query.removeprefix("ranges="))
        elif self.path in self.baas.files:
            self._serve(self.baas.files[self.path])
        else:
            self._json(404, {"detail": "Not found."})

    def _serve_selection(self, path: str, spec: str) -> None:
        pieces = self.baas.pieces[path]
        indices: list[int] = []
        for item in spec.split(","):
            first, _, last = item.partition("-")
            indices.extend(range(int(first), int(last or first) + 1))
        data = self.baas.files[path].read_bytes()
        body = b"".join(data[pieces[i][0] : pieces[i][0] + pieces[i][1]] for i in indices)
        self.baas.selections.append(spec)
        self.baas.served[path] = self.baas.served.get(path, 0) + len(body)
        self.send_response(200)
        self.send_header("ETag", f'"{hash(spec) & 0xFFFFFFFF:x}"')
        self.send_header(
            "Content-Type",
            "application/zstd"
            if path.endswith(".zst") or self.baas.files[path].suffix == ".zst"
            else "application/octet-stream",
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, path: Path) -> None:
        stat = path.stat()
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        start, last = 0, stat.st_size - 1
        wanted = self.headers.get("Range")
        ranged = bool(wanted) and self.headers.get("If-Range", etag) == etag
        if ranged:  # bytes=a- or bytes=a-b
            first, _, end = wanted.removeprefix("bytes=").partition("-")
            start, last = int(first), min(int(end or last), last)
        self.send_response(206 if ranged else 200)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        zstd = path.suffix == ".zst"
        self.send_header("Content-Type", "application/zstd" if zstd else "application/octet-stream")
        self.send_header("Content-Length", str(last + 1 - start))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{last}/{stat.st_size}")
        self.end_headers()
        self.baas.served[self.path] = self.baas.served.get(self.path, 0) + last + 1 - start
        limit = None
        if self.baas.cut_path in (None, self.path):
            limit, self.baas.cut_after = self.baas.cut_after, None
        with path.open("rb") as file:
            file.seek(start)
            sent = 0
            while sent < last + 1 - start and (
                chunk := file.read(min(1 << 20, last + 1 - start - sent))
            ):
                if limit is not None and sent + len(chunk) > limit:
                    self.wfile.write(chunk[: limit - sent])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

    def do_POST(self) -> None:
        self.baas.requests.append(("POST", self.path, dict(self.headers)))
        if self.path == "/api/agent/checkin":
            self._checkin(json.loads(self._body()))
            return
        if not self._authorized():
            return
        body = self._body()
        if self.path == "/api/agent/progress" and self.baas.progress_failures > 0:
            self.baas.progress_failures -= 1
            self._json(503, {"detail": "Try again."})
        elif self.path == "/api/agent/progress":
            self.baas.progress.append(json.loads(body))
            self._json(200, {})
        elif self.path == "/api/log":
            self.baas.logs.extend(json.loads(body)["lines"])
            self._json(200, {})
        elif self.path == "/api/agent/result":
            result = json.loads(body)
            self.baas.logs.extend(result.pop("lines", []))  # kept before the result, as /api/log
            self.baas.results.append(result)
            self._json(200, {})
        else:
            self._upload(body)

    def _checkin(self, body: dict[str, Any]) -> None:
        if (
            self.baas.checked_in
            or self.headers.get("Authorization") != f"Bearer {self.baas.boot_token}"
        ):
            self._json(401, {"detail": "Invalid token."})
            return
        self.baas.checked_in = True
        answer = {"token": self.baas.deployment_token, "deployment": 42, "mac": body["mac"]}
        if self.baas.instructions_at_checkin:
            answer["instructions"] = {"deployment": 42, **self.baas.instructions}
        self._json(200, answer)

    def _upload(self, body: bytes) -> None:
        if self.baas.refuse_chunked and "Content-Length" not in self.headers:
            self._json(411, {"detail": "Length required."})
            return
        path, _, query = self.path.partition("?")
        disk = parse_qs(query).get("disk", [None])[0]
        entries = [s for s in self.baas.instructions["sync"] if s["upload_url"] == path]
        if not entries:
            self._json(404, {"detail": "Not found."})
            return
        entry = next((s for s in entries if disk in (None, s["disk"])), None)
        if entry is None:
            self._json(409, {"detail": f"No sync entry of {path} is for {disk}."})
            return
        raw = body
        if self.headers.get("Content-Encoding") == "zstd":
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        digest = hashlib.sha256(raw)
        claimed = self.headers.get("Content-Digest", "")
        if claimed != f"sha-256=:{base64.b64encode(digest.digest()).decode()}:":
            self._json(400, {"detail": "Content-Digest does not match."})
            return
        version = entry["version"] + 1 + len(self.baas.uploads)
        upload = {"path": path, "disk": disk, "raw": raw, "headers": dict(self.headers)}
        self.baas.uploads.append(upload)
        self._json(201, {"version": version, "size": len(raw), "sha256": digest.hexdigest()})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _dechunk(self.rfile)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


def _dechunk(rfile: Any) -> bytes:
    parts = []
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline()
