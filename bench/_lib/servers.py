"""The other servers the benchmarks measure against (nginx with sendfile, a sink that
discards a request's body) and the clients that time them (sendfile(2) uploads, curl)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

from _lib.util import PYTHON, free_port, timed

NGINX_CONF = """\
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def listening(port: int, seconds: float) -> bool:
    """Whether something accepts connections on the loopback ``port`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return True
        time.sleep(0.1)
    return False


def send_file(port: int, target: str, path: Path, headers: dict) -> tuple[int, dict]:
    """POST ``path`` as the body with sendfile(2); (status, JSON answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        head = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                f"Content-Length: {path.stat().st_size}", "Connection: close",
                *(f"{name}: {value}" for name, value in headers.items())]  # fmt: skip
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        with open(path, "rb") as file:
            sock.sendfile(file)
        response = http.client.HTTPResponse(sock)
        response.begin()
        text = response.read()
        return response.status, json.loads(text or b"{}")


# An HTTP server that takes a request's body off its socket and throws it away, the
# least any server must do: what moving the bytes over loopback TCP costs, alone.
SINK_SERVER = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
buffer = memoryview(bytearray(1 << 20))

def serve(connection):
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        more = connection.recv(65536)
        if not more:  # a connection that only checked the server is up
            return
        head += more
    head, body = head.split(b"\\r\\n\\r\\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\\r\\n")
                  if line.lower().startswith(b"content-length:"))
    left = length - len(body)
    while left > 0:
        got = connection.recv_into(buffer, min(left, len(buffer)))
        if not got:
            return
        left -= got
    connection.sendall(b"HTTP/1.1 201 Created\\r\\nContent-Length: 2\\r\\n\\r\\n{}")

while True:
    connection, _ = server.accept()
    with connection:
        serve(connection)
"""


class Sink:
    """:data:`SINK_SERVER` in a process of its own."""

    def __init__(self):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(PYTHON), "-c", SINK_SERVER, str(self.port)])
        if not listening(self.port, 10):
            raise SystemExit("the sink server did not start")

    def upload(self, path: Path) -> float:
        seconds, (status, _) = timed(lambda: send_file(self.port, "/", path, {}))
        if status != 201:
            raise SystemExit(f"the sink answered {status}")
        return seconds

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Nginx:
    def __init__(self, workdir: Path, root: Path):
        self.prefix = workdir / "nginx"
        self.port = free_port()
        self.root = root
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix, port=self.port, root=self.root))
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        if not listening(self.port, 10):
            raise SystemExit(f"nginx did not start; see {self.prefix}/error.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
