"""Catalogue benchmark: create, upload and download a 6 GiB image through gunicorn.

Every figure is a ratio against a baseline measured in the same run on the
same disk (``cp --sparse=always`` + fsync for uploads, nginx with sendfile for
downloads), with the absolute seconds and MB/s beside it. The script builds
its own throwaway BAAS (SQLite unless DATABASE_URL is set, DEBUG off, the
project's gunicorn.conf.py on a free loopback port), its own test image and
its own nginx, and removes all of it at the end unless ``--keep``.

    .venv/bin/python bench/catalogue.py [--workdir DIR] [--size 6G] [--data 600M]
        [--repeat 3] [--seed 1] [--json out.json] [--keep]

It always exits 0 once it has measured; a missed target is printed as FAIL.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diskimage import BLOCK

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
PIECE = 1 << 20  # generation writes and hashes in pieces of this size, never a whole image
MiB = 1 << 20
LAYOUT_VERSION = 1  # bump when the generator changes, so cached test data is rebuilt
USERNAME = "bench"


# --- Small helpers ---------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``6G``, ``600M``, ``512K`` or plain bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def sync_all() -> None:
    """Flush everything dirty before a timing, so no timing pays for an earlier write."""
    os.sync()


def read_through(path: Path) -> None:
    """Read a file once (holes included) so both servers start from a warm page cache."""
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- Test data -------------------------------------------------------------------------

# Segment kinds and their share of the written bytes: an OS disk holds text
# (configs, scripts, logs), binaries (mostly compressible code and tables),
# already-compressed files (random-looking) and zero blocks that were written.
KINDS = (("text", 0.35), ("binary", 0.40), ("random", 0.20), ("zeros", 0.05))
# binary-like bytes: half zeros, a quarter from 16 common values, a quarter from 64.
BINARY_TABLE = bytes(0 if b < 128 else ((b - 128) % 16) * 17 if b < 192 else b for b in range(256))


@dataclass
class TestImage:
    raw: Path
    zst: Path
    size: int
    sha256: str
    written: int  # bytes written into extents (allocated in the raw file)
    data: int  # bytes of 4 KiB blocks holding anything but zeros: the least a sparse copy needs
    extents: int
    zst_size: int = 0
    seed: int = 0
    layout: int = LAYOUT_VERSION


def _plan_extents(rng: random.Random, size: int, data: int) -> list[tuple[int, int]]:
    """(offset, length) of the data extents: ~70 % small files, some big ones, gaps between."""
    lengths, total = [], 0
    while total < data:
        pick = rng.random()
        if pick < 0.70:
            length = rng.randint(1, 64) * BLOCK  # 4 KiB .. 256 KiB
        elif pick < 0.95:
            length = rng.randint(64, 2048) * BLOCK  # .. 8 MiB
        else:
            length = rng.randint(2048, 16384) * BLOCK  # .. 64 MiB
        if length > BLOCK and rng.random() < 0.3:
            length -= rng.randint(1, 7) * 512  # a file's last block, partly used
        length = min(length, data - total)
        lengths.append(length)
        total += length
    free = size - sum(-(-n // BLOCK) * BLOCK for n in lengths)
    if free < 0:
        raise SystemExit("--data does not fit in --size")
    weights = [rng.random() for _ in range(len(lengths) + 1)]
    scale = free / sum(weights)
    extents, offset = [], 0
    for length, weight in zip(lengths, weights, strict=False):
        offset += int(weight * scale) // BLOCK * BLOCK
        extents.append((offset, length))
        offset += -(-length // BLOCK) * BLOCK
    return extents


def _text_pool(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz_-"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
    shapes = (
        lambda w: f"{w[0]} = {w[1]}",
        lambda w: f"/usr/lib/{w[0]}/{w[1]}.so.{len(w[2])}",
        lambda w: f"[{w[0]}] {w[1]} {w[2]}: {w[3]} {w[4]}",
        lambda w: f"    if {w[0]}({w[1]}) then {w[2]}.{w[3]}() end",
        lambda w: " ".join(w),
    )
    return [rng.choice(shapes)(rng.choices(words, k=8)) for _ in range(6000)]


def _text(rng: random.Random, pool: list[str], n: int) -> bytes:
    parts, size = [], 0
    while size < n:
        lines = rng.choices(pool, k=1024)
        tokens = rng.randbytes(4096).hex()  # a little noise per line: numbers, ids, dates
        text = "".join(f"{line} {tokens[i * 8 : i * 8 + 8]}\n" for i, line in enumerate(lines))
        parts.append(text.encode())
        size += len(parts[-1])
    return b"".join(parts)[:n]


def _segment(rng: random.Random, pool: list[str], kind: str, n: int) -> bytes:
    if kind == "text":
        return _text(rng, pool, n)
    if kind == "binary":
        return rng.randbytes(n).translate(BINARY_TABLE)
    if kind == "random":
        return rng.randbytes(n)
    return bytes(n)


def _hash_zeros(digest, n: int, zeros: memoryview) -> None:
    while n:
        step = min(n, len(zeros))
        digest.update(zeros[:step])
        n -= step


def generate_raw(path: Path, size: int, data: int, seed: int) -> TestImage:
    """A sparse raw image: ``data`` bytes in extents over ``size``, written in 1 MiB pieces."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    pool = _text_pool(rng)
    extents = _plan_extents(rng, size, data)
    names, weights = zip(*KINDS, strict=True)
    digest, zeros = hashlib.sha256(), memoryview(bytes(PIECE))
    data_bytes = position = 0
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            _hash_zeros(digest, offset - position, zeros)
            f.seek(offset)
            done = 0
            while done < length:
                n = min(length - done, rng.randint(4, 256) * BLOCK)
                kind = rng.choices(names, weights)[0]
                for start in range(0, n, PIECE):
                    piece = _segment(rng, pool, kind, min(PIECE, n - start))
                    f.write(piece)
                    digest.update(piece)
                if kind != "zeros":
                    data_bytes += -(-n // BLOCK) * BLOCK
                done += n
            position = offset + length
        _hash_zeros(digest, size - position, zeros)
        f.flush()
        os.fsync(f.fileno())
    return TestImage(
        raw=path,
        zst=path.with_suffix(".img.zst"),
        size=size,
        sha256=digest.hexdigest(),
        written=sum(n for _, n in extents),
        data=data_bytes,
        extents=len(extents),
        seed=seed,
    )


def test_image(directory: Path, size: int, data: int, seed: int) -> TestImage:
    """The test image and its zstd form, reused from an earlier ``--keep`` run when identical."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"disk-s{seed}-{size}-{data}.img"
    manifest = raw.with_suffix(".json")
    if manifest.exists() and raw.exists():
        cached = TestImage(**{**json.loads(manifest.read_text()), "raw": raw})
        cached.zst = Path(cached.zst)
        if cached.layout == LAYOUT_VERSION and cached.zst.exists():
            log(f"reusing test data {raw}")
            return cached
    log(f"generating {size / 2**30:.1f} GiB sparse image with {data / MiB:.0f} MiB of data")
    seconds, image = timed(lambda: generate_raw(raw, size, data, seed))
    log(f"  written in {seconds:.1f} s: {image.extents} extents, sha256 {image.sha256[:16]}…")
    zstd = ["zstd", "-T0", "-3", "-q", "-f", str(raw), "-o", str(image.zst)]
    seconds, _ = timed(lambda: run(zstd))
    image.zst_size = image.zst.stat().st_size
    log(f"  zstd -T0 -3 in {seconds:.1f} s: {image.zst_size / MiB:.0f} MiB")
    manifest.write_text(json.dumps({**asdict(image), "raw": str(raw), "zst": str(image.zst)}))
    return image


# --- The throwaway BAAS ----------------------------------------------------------------


class MemorySampler:
    """Polls VmRSS of gunicorn's master and workers; reads each worker's VmHWM at the end."""

    def __init__(self, master: int, interval: float = 0.02):
        self.master = master
        self.interval = interval
        self.peak_tree = 0
        self.peak_worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def pids(self) -> list[int]:
        children = []
        for task in Path(f"/proc/{self.master}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children += [int(p) for p in task.read_text().split()]
        return children

    @staticmethod
    def status(pid: int, key: str) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def worker_hwm(self) -> int:
        return max((self.status(pid, "VmHWM") for pid in self.pids()), default=0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            workers = [self.status(pid, "VmRSS") for pid in self.pids()]
            tree = sum(workers) + self.status(self.master, "VmRSS")
            self.peak_tree = max(self.peak_tree, tree)
            self.peak_worker = max(self.peak_worker, *workers, 0)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Baas:
    """A BAAS instance of its own: var dir, image root, database, user, token, gunicorn."""

    def __init__(self, workdir: Path, image_size: int, repo: Path = REPO):
        self.repo = repo
        self.var = workdir / "var"
        self.disk = workdir / "disk"
        self.port = free_port()
        self.log_path = workdir / "gunicorn.log"
        self.proc: subprocess.Popen | None = None
        self.token = ""
        self.env = {
            **os.environ,
            "BAAS_VAR_DIR": str(self.var),
            "BAAS_DISK_ROOT": str(self.disk),
            "BAAS_NEW_IMAGE_SIZE": str(image_size),
            "BAAS_BIND": f"127.0.0.1:{self.port}",
            "STATIC_ROOT": str(self.var / "static"),
            # Production-like: DEBUG off, plain HTTP on loopback (no TLS proxy here).
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "SECURE_HSTS_SECONDS": "0",
            "LOG_LEVEL": "WARNING",
        }
        for name in ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            self.env.pop(name, None)
        self.database = "PostgreSQL" if "DATABASE_URL" in os.environ else "SQLite"

    def setup(self) -> None:
        self.var.mkdir(parents=True)
        self.disk.mkdir(parents=True)
        run([str(PYTHON), "manage.py", "migrate", "--no-input"], cwd=self.repo, env=self.env)
        code = (
            "from accounts.services import user_create, token_create\n"
            f"u = user_create(actor=None, username={USERNAME!r}, email='bench@example.invalid')\n"
            "print('TOKEN=' + token_create(actor=None, user=u, name='bench')[1])\n"
        )
        out = run([str(PYTHON), "manage.py", "shell", "-c", code], cwd=self.repo, env=self.env)
        self.token = next(line[6:] for line in out.stdout.splitlines() if line.startswith("TOKEN="))

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", "baas_site.wsgi:application"],
                cwd=self.repo,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited; see {self.log_path}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/healthz")[0] in (200, 503):
                    return
            time.sleep(0.2)
        raise SystemExit("gunicorn did not answer within 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read()
            try:
                return response.status, json.loads(text) if text else {}
            except ValueError:
                return response.status, {"text": text[:200].decode(errors="replace")}
        finally:
            conn.close()

    def create_image(self, name: str) -> dict:
        status, image = self.request(
            "POST", f"/api/user/{USERNAME}/image", {"name": name, "compression": "none"}
        )
        if status != 201:
            raise SystemExit(f"creating an image answered {status}: {image}")
        return image

    def delete_image(self, uuid: str) -> None:
        self.request("DELETE", f"/api/image/{uuid}")

    def digest_job(self, uuid: str, number: int) -> tuple[float, str]:
        """Run the job that records a large upload's SHA-256; (seconds inside it, digest)."""
        code = (
            "import time\n"
            "from catalogue.models import Version\n"
            "from catalogue.services.digests import version_digest_complete\n"
            f"v = Version.objects.get(image_id={uuid!r}, number={number})\n"
            "t = time.monotonic()\n"
            "digest = version_digest_complete(version_id=v.pk)\n"
            "print(f'DIGEST={time.monotonic() - t:.3f} {digest}')\n"
        )
        out = run([str(PYTHON), "manage.py", "shell", "-c", code], cwd=self.repo, env=self.env)
        line = next(line[7:] for line in out.stdout.splitlines() if line.startswith("DIGEST="))
        seconds, digest = line.split()
        return float(seconds), digest

    def version_file(self, uuid: str, number: int) -> Path:
        """The version's file as stored: raw, or zstd as a large zstd upload leaves it."""
        found = sorted((self.disk / uuid).glob(f"{number}.img*"))
        return found[0] if found else self.disk / uuid / f"{number}.img"

    def upload(
        self,
        uuid: str,
        path: Path,
        encoding: str | None,
        digest: str | None = None,
        client: str = "sendfile",
    ) -> tuple[float, dict]:
        """Upload the file as the body of POST /api/image/<uuid>; (seconds, answer).

        ``client``: ``sendfile`` sends the file with zero-copy sendfile(2), so the
        client costs next to nothing and the server is what is measured; ``curl``
        is ``curl -T``, which pushes the body through a 64 KiB buffer and is, for a
        raw image, slower than the server; ``sparse`` is BAAS's own client
        (contrib/upload/baas-upload), which sends the raw image without its holes,
        as an Android sparse image. ``digest``: the raw image's SHA-256,
        sent as Content-Digest (the server then hashes all of the image before
        it answers)."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/octet-stream",
        }
        if encoding:
            headers["Content-Encoding"] = encoding
        if digest:
            value = base64.b64encode(bytes.fromhex(digest)).decode()
            headers["Content-Digest"] = f"sha-256=:{value}:"
        target = f"/api/image/{uuid}"
        send = {"sendfile": self._sendfile, "curl": self._curl, "sparse": self._sparse}[client]
        seconds, (status, body) = timed(lambda: send(target, path, headers))
        if status != 201:
            raise SystemExit(f"upload answered {status}: {body}")
        return seconds, body

    def _sendfile(self, target: str, path: Path, headers: dict) -> tuple[int, dict]:
        return send_file(self.port, target, path, headers)

    def _sparse(self, target: str, path: Path, headers: dict) -> tuple[int, dict]:
        env = {**os.environ, "BAAS_TOKEN": self.token}
        client = self.repo / "contrib" / "upload" / "baas-upload"
        out = subprocess.run([sys.executable, str(client), self.url(target), str(path)],
                             capture_output=True, text=True, env=env, check=False)  # fmt: skip
        if out.returncode != 0:
            return 0, {"detail": out.stderr.strip()}
        return 201, json.loads(out.stdout)

    def _curl(self, target: str, path: Path, headers: dict) -> tuple[int, dict]:
        answer = self.var / "upload-answer.json"
        cmd = ["curl", "-sS", "-X", "POST", "-T", str(path), "-o", str(answer),
               "-w", "%{http_code}", "-H", "Expect:"]  # fmt: skip
        for name, value in headers.items():
            cmd += ["-H", f"{name}: {value}"]
        out = run([*cmd, self.url(target)])
        return int(out.stdout.strip() or 0), json.loads(answer.read_text() or "{}")


# --- nginx -------------------------------------------------------------------------------

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


def curl_download(url: str, token: str | None, expected: int) -> float:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    seconds, out = timed(lambda: run([*cmd, url]))
    code, size = out.stdout.split()
    if code != "200" or int(size) != expected:
        raise SystemExit(f"download of {url} answered {code} with {size} bytes, not {expected}")
    return seconds


# --- Measurements ------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    baas: float | None  # seconds (or MiB for sizes)
    baseline: float | None
    ratio: float | None
    target: str
    ok: bool | None
    detail: str = ""
    samples: dict = field(default_factory=dict)


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure_create(baas: Baas, repeat: int, size: int) -> Row:
    times, blocks, sizes = [], [], []
    for i in range(repeat):
        seconds, image = timed(lambda i=i: baas.create_image(f"bench-create-{i}"))
        times.append(seconds)
        blocks.append(baas.version_file(image["uuid"], 0).stat().st_blocks)
        sizes.append(image["versions"][0]["size"])
        baas.delete_image(image["uuid"])
    t = median(times)
    ok = t < 1.0 and max(blocks) == 0 and all(s == size for s in sizes)
    detail = f"version 0: {sizes[0] / 2**30:.1f} GiB, st_blocks {max(blocks)}"
    return Row("create 6 GiB image", t, None, None, "< 1 s, 0 blocks", ok, detail,
               {"seconds": times, "st_blocks": blocks})  # fmt: skip


def baseline_copy(image: TestImage, workdir: Path) -> tuple[float, int]:
    """``cp --sparse=always`` of the raw file, then fsync of the copy (as BAAS fsyncs its own)."""
    dst = workdir / "disk" / "cp-baseline.img"
    sync_all()
    seconds, _ = timed(
        lambda: run(
            ["sh", "-c", 'cp --sparse=always --reflink=never "$1" "$2" && sync "$2"', "-",
             str(image.raw), str(dst)]
        )
    )  # fmt: skip
    blocks = allocated(dst)
    dst.unlink()
    return seconds, blocks


def upload_once(
    baas: Baas,
    image: TestImage,
    encoding: str | None,
    name: str,
    digest: bool = False,
    client: str = "sendfile",
) -> dict:
    """One timed upload to a new image. A SHA-256 the answer leaves to the job is then
    recorded by running that job (untimed by the upload, timed on its own) and checked."""
    created = baas.create_image(name)
    sync_all()
    path = image.zst if encoding else image.raw
    sent = image.sha256 if digest else None
    seconds, answer = baas.upload(created["uuid"], path, encoding, sent, client)
    job = None
    recorded = answer.get("sha256")
    if recorded is None and answer.get("version") is not None:
        job, recorded = baas.digest_job(created["uuid"], answer["version"])
    if recorded != image.sha256 or answer.get("size") != image.size:
        raise SystemExit(f"the server stored something else: {answer}, SHA-256 {recorded}")
    stored = baas.version_file(created["uuid"], answer["version"])
    return {"uuid": created["uuid"], "seconds": seconds, "allocated": allocated(stored),
            "path": stored, "job": job}  # fmt: skip


def measure_uploads(baas: Baas, image: TestImage, workdir: Path, repeat: int) -> tuple[list, str]:
    """cp baseline, zstd upload and raw upload, interleaved so noise hits all three alike."""
    read_through(image.raw)
    read_through(image.zst)
    cp_t, zst_t, raw_t, cp_blocks, zst_blocks, raw_blocks = [], [], [], [], [], []
    jobs, digest_t, curl_t, unzstd_t, sink_t = [], [], [], [], []
    sparse_t, sparse_blocks = [], []
    keep_uuid = ""
    sink = Sink()
    sink.start()
    with MemorySampler(baas.proc.pid) as memory, contextlib.closing(sink):
        for i in range(repeat):
            seconds, blocks = baseline_copy(image, workdir)
            cp_t.append(seconds)
            cp_blocks.append(blocks)
            log(f"  cp --sparse=always + sync: {seconds:.2f} s")
            zst = upload_once(baas, image, "zstd", f"bench-zst-{i}")
            zst_t.append(zst["seconds"])
            zst_blocks.append(zst["allocated"])
            baas.delete_image(zst["uuid"])
            jobs.append(zst["job"])
            log(f"  upload zstd: {zst['seconds']:.2f} s (then the SHA-256 job: {zst['job']} s)")
            holes = upload_once(baas, image, None, f"bench-sparse-{i}", client="sparse")
            sparse_t.append(holes["seconds"])
            sparse_blocks.append(holes["allocated"])
            baas.delete_image(holes["uuid"])
            jobs.append(holes["job"])
            log(f"  upload raw without its holes (baas-upload): {holes['seconds']:.2f} s")
            raw = upload_once(baas, image, None, f"bench-raw-{i}")
            raw_t.append(raw["seconds"])
            raw_blocks.append(raw["allocated"])
            jobs.append(raw["job"])
            log(f"  upload raw:  {raw['seconds']:.2f} s (then the SHA-256 job: {raw['job']} s)")
            signed = upload_once(baas, image, None, f"bench-digest-{i}", digest=True)
            digest_t.append(signed["seconds"])
            baas.delete_image(signed["uuid"])
            log(f"  upload raw with Content-Digest: {signed['seconds']:.2f} s")
            curled = upload_once(baas, image, None, f"bench-curl-{i}", client="curl")
            curl_t.append(curled["seconds"])
            baas.delete_image(curled["uuid"])
            log(f"  upload raw with curl -T: {curled['seconds']:.2f} s")
            unzstd_t.append(timed(lambda: run(["sh", "-c", 'zstd -dc "$1" >/dev/null', "-",
                                                str(image.zst)]))[0])  # fmt: skip
            log(f"  zstd -dc > /dev/null: {unzstd_t[-1]:.2f} s")
            sync_all()
            sink_t.append(sink.upload(image.raw))
            log(f"  raw body to a server that discards it: {sink_t[-1]:.2f} s")
            if keep_uuid:
                baas.delete_image(keep_uuid)
            keep_uuid = raw["uuid"]
        hwm = max(memory.worker_hwm(), memory.peak_worker)
        tree = memory.peak_tree
    cp, zs, rw, dg = median(cp_t), median(zst_t), median(raw_t), median(digest_t)
    cu, uz, sk, sp = median(curl_t), median(unzstd_t), median(sink_t), median(sparse_t)
    job = median([j for j in jobs if j is not None]) if any(j is not None for j in jobs) else None
    data = image.data
    rows = [
        Row("upload zstd vs cp+sync", zs, cp, zs / cp, "<= 1.25", zs / cp <= 1.25,
            f"{mb_s(image.size, zs):.0f} MB/s raw, {mb_s(image.zst_size, zs):.0f} MB/s wire; "
            f"cp {mb_s(data, cp):.0f} MB/s of data", {"baas": zst_t, "baseline": cp_t}),
        Row("upload raw, without its holes, vs cp+sync", sp, cp, sp / cp, "<= 2.0",
            sp / cp <= 2.0,
            "contrib/upload/baas-upload: an Android sparse image of the file's data extents "
            "(SEEK_DATA), sent with sendfile; client start-up included",
            {"baas": sparse_t, "baseline": cp_t}),
        Row("upload raw, every byte, vs cp+sync", rw, cp, rw / cp, "<= 2.0", rw / cp <= 2.0,
            f"{mb_s(image.size, rw):.0f} MB/s raw over the wire (all 6 GiB, zeros too)",
            {"baas": raw_t, "baseline": cp_t}),
        Row("  raw body to a sink vs cp+sync", sk, cp, sk / cp, "-", None,
            "loopback TCP alone: the same request to a server that only discards the body",
            {"sink": sink_t, "baseline": cp_t}),
        Row("  upload raw vs the sink", rw, sk, rw / sk, "-", None,
            "what BAAS adds to moving the bytes (mapping, writing, checking)",
            {"baas": raw_t, "sink": sink_t}),
        Row("  zstd -dc > /dev/null vs cp+sync", uz, cp, uz / cp, "-", None,
            "decoding the upload alone, which the server must do to check it",
            {"zstd": unzstd_t, "baseline": cp_t}),
        Row("upload raw with curl -T vs cp+sync", cu, cp, cu / cp, "-", None,
            "curl 7.88 sends through a 64 KiB buffer: the client is the bottleneck",
            {"baas": curl_t, "baseline": cp_t}),
        Row("upload raw + Content-Digest vs cp+sync", dg, cp, dg / cp, "-", None,
            "the server hashes all of the image (zeros too) before it answers",
            {"baas": digest_t, "baseline": cp_t}),
        Row("SHA-256 job after an upload (s)", job, None, None, "-", None,
            "records the whole-image SHA-256 the answer left to it; not part of the upload",
            {"job": jobs}),
        Row("server peak memory (MiB)", hwm / MiB, None, None, "< 150 MiB", hwm < 150 * MiB,
            f"worker VmHWM; master+workers RSS peak {tree / MiB:.0f} MiB",
            {"worker_hwm": hwm, "tree_rss_peak": tree}),
        _blocks_row("stored blocks, raw upload", raw_blocks, data, cp_blocks, True),
        _blocks_row("stored blocks, zstd upload (as sent)", zst_blocks, data, cp_blocks, False),
        _blocks_row("stored blocks, sparse upload", sparse_blocks, data, cp_blocks, False),
    ]  # fmt: skip
    return rows, keep_uuid


def _blocks_row(name: str, blocks: list[int], data: int, cp_blocks: list[int], gate: bool) -> Row:
    stored = max(blocks)
    ratio = stored / data
    return Row(name + " (MiB)", stored / MiB, data / MiB, ratio, "within 5 % of data",
               abs(ratio - 1) <= 0.05 if gate else None,
               f"baseline = data blocks; cp copy allocates {max(cp_blocks) / MiB:.1f} MiB",
               {"allocated": blocks, "data": data, "cp_allocated": cp_blocks})  # fmt: skip


def measure_download(baas: Baas, workdir: Path, uuid: str, repeat: int) -> Row:
    """GET /api/image/<uuid>/<n> vs nginx on the same file, both warm, curl -o /dev/null."""
    number = max(int(p.name.split(".")[0]) for p in (baas.disk / uuid).glob("*.img"))
    path = baas.version_file(uuid, number)
    size = path.stat().st_size
    nginx = Nginx(workdir, path.parent)
    nginx.start()
    try:
        read_through(path)  # warm: both serve from the page cache
        ours, theirs = [], []
        for _ in range(repeat):
            theirs.append(curl_download(f"http://127.0.0.1:{nginx.port}/{path.name}", None, size))
            ours.append(curl_download(baas.url(f"/api/image/{uuid}/{number}"), baas.token, size))
            log(f"  download: BAAS {ours[-1]:.2f} s, nginx {theirs[-1]:.2f} s")
    finally:
        nginx.stop()
    b, n = median(ours), median(theirs)
    return Row("download vs nginx (throughput)", b, n, n / b, ">= 0.9", n / b >= 0.9,
               f"BAAS {mb_s(size, b):.0f} MB/s, nginx {mb_s(size, n):.0f} MB/s; warm cache",
               {"baas": ours, "baseline": theirs})  # fmt: skip


# --- The command-line client (baas image push / pull) ----------------------------------------


class Cli:
    """``baas`` run as a researcher runs it: a new process per command, its start-up timed.

    The client is the one of the checkout under test (``--repo``: its ``cli/`` and
    ``diskimage/`` first on the path), so that a run against an older checkout measures
    that checkout's client too."""

    def __init__(self, baas: Baas, home: Path):
        self.baas, self.home = baas, home
        home.mkdir(parents=True, exist_ok=True)
        self.command = [sys.executable, "-m", "baas_cli"]
        self.env = {**os.environ, "BAAS_URL": baas.url(""), "BAAS_TOKEN": baas.token,
                    "XDG_CONFIG_HOME": str(home / "config"),
                    "XDG_STATE_HOME": str(home / "state"),
                    "PYTHONPATH": f"{baas.repo / 'cli'}{os.pathsep}{baas.repo}"}  # fmt: skip

    def run(self, *args: str) -> dict:
        out = subprocess.run([*self.command, *args, "--json"], capture_output=True, text=True,
                             env=self.env, check=False)  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"baas {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def push(self, uuid: str, path: Path, *extra: str) -> tuple[float, dict]:
        """``baas image push`` as a sparse image (--compress none): auto would measure the link
        and may compress, which is another comparison than cp's. The answer gets ``cpu``:
        the seconds of CPU the client and gunicorn's workers used meanwhile (on a loaded
        machine the figure the load does not inflate)."""
        server = _workers_cpu(self.baas)
        with cpu_of_children() as client:
            seconds, answer = timed(
                lambda: self.run("image", "push", uuid, str(path), "--compress", "none", *extra)
            )
        answer["cpu"] = {"client": client[0], "server": _workers_cpu(self.baas) - server}
        return seconds, answer

    def push_killed_at_half(self, uuid: str, path: Path) -> int:
        """Start a push, SIGKILL it once the server holds half its body; the server's offset."""
        errors = self.home / "killed-push.err"
        with errors.open("w") as stderr:
            process = subprocess.Popen(
                [*self.command, "image", "push", uuid, str(path), "--limit-rate", "100M",
                 "--compress", "none"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            offset, length = 0, 0
            deadline = time.monotonic() + 120
            while (not length or offset < length // 2) and time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SystemExit(f"the push to kill ended first: {errors.read_text()}")
                time.sleep(0.05)
                offset, length = self._upload_offset()
        finally:
            process.kill()
            process.wait()
        while True:  # the server stores what arrived once it sees the socket close
            time.sleep(0.5)
            settled, _ = self._upload_offset()
            if settled == offset:
                return offset
            offset = settled

    def _upload_offset(self) -> tuple[int, int]:
        states = list((self.home / "state" / "baas" / "push").glob("*.json"))
        if not states:
            return 0, 0
        upload = json.loads(states[0].read_text())["upload"]
        conn = http.client.HTTPConnection("127.0.0.1", self.baas.port, timeout=30)
        try:
            conn.request("HEAD", upload, headers={"Authorization": f"Bearer {self.baas.token}",
                                                  "Upload-Draft-Interop-Version": "8"})  # fmt: skip
            response = conn.getresponse()
            response.read()
            return int(response.getheader("Upload-Offset") or 0), int(
                response.getheader("Upload-Length") or 0
            )
        finally:
            conn.close()

    def pull(self, ref: str, target: Path) -> tuple[float, dict]:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        sync_all()
        return timed(lambda: self.run("image", "pull", ref, str(target)))


@contextlib.contextmanager
def cpu_of_children() -> Iterator[list[float]]:
    """The CPU seconds (user + system) of the child processes waited for in the block,
    in the list yielded once the block ends."""
    used = [0.0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield used
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used[0] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _workers_cpu(baas: Baas) -> float:
    """The CPU seconds gunicorn's workers have used so far (from /proc)."""
    if baas.proc is None:
        return 0.0
    total = 0
    for pid in MemorySampler(baas.proc.pid).pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def curl_to_file(url: str, target: Path, expected: int) -> float:
    """``curl -o FILE`` of the whole raw file (every byte, zeros too, written out)."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    sync_all()
    cmd = ["curl", "-sS", "-o", str(target), "-w", "%{http_code} %{size_download}", url]
    seconds, out = timed(lambda: run(cmd))
    code, size = out.stdout.split()
    if code != "200" or int(size) != expected:
        raise SystemExit(f"curl of {url} answered {code} with {size} bytes, not {expected}")
    return seconds


def _pushed_once(cli: Cli, baas: Baas, image: TestImage, name: str, *extra: str) -> dict:
    created = baas.create_image(name)
    sync_all()
    seconds, answer = cli.push(created["uuid"], image.raw, *extra)
    if answer.get("size") != image.size:
        raise SystemExit(f"baas image push stored something else: {answer}")
    return {"uuid": created["uuid"], "seconds": seconds, "answer": answer}


def _phases(answer: dict) -> str:
    """Where a push's time went, as the client saw it: sending, then the server's answer;
    and the CPU it took, the client's and the server's."""
    transfer, cpu = answer.get("transfer", {}), answer.get("cpu", {})
    return (
        f"sending {transfer.get('seconds_sending', 0):.2f} s, answer after "
        f"{transfer.get('seconds_waiting', 0):.2f} s; CPU client {cpu.get('client', 0):.2f} s, "
        f"server {cpu.get('server', 0):.2f} s"
    )


def measure_cli(
    baas: Baas, image: TestImage, workdir: Path, repeat: int, pull: bool = True
) -> list[Row]:
    """baas image push vs cp+sync, a resumed push vs a fresh one, baas image pull vs curl
    (``pull=False``: the pushes alone)."""
    read_through(image.raw)
    cli = Cli(baas, workdir / "cli-home")
    cp_t, push_t, plain_t, resumed_t = [], [], [], []
    sent, resumed_sent = [], []
    checked = ""
    cpu: dict[str, list[float]] = {"cp": [], "push": [], "resumed": []}
    for i in range(repeat):
        with cpu_of_children() as used:
            cp_t.append(baseline_copy(image, workdir)[0])
        cpu["cp"].append(used[0])
        log(f"  cp --sparse=always + sync: {cp_t[-1]:.2f} s (CPU {used[0]:.2f} s)")
        fresh = _pushed_once(cli, baas, image, f"bench-cli-{i}")
        push_t.append(fresh["seconds"])
        cpu["push"].append(sum(fresh["answer"]["cpu"].values()))
        sent.append(fresh["answer"]["transfer"]["sent"])
        log(f"  baas image push: {fresh['seconds']:.2f} s ({sent[-1] / MiB:.0f} MiB sent; "
            f"{_phases(fresh['answer'])})")  # fmt: skip
        if not checked:  # once: the job records the SHA-256, which must be the image's
            _job, digest = baas.digest_job(fresh["uuid"], fresh["answer"]["version"])
            if digest != image.sha256:
                raise SystemExit(f"baas image push stored other bytes: SHA-256 {digest}")
            checked = fresh["uuid"]
        else:
            baas.delete_image(fresh["uuid"])
        plain = _pushed_once(cli, baas, image, f"bench-cli-plain-{i}", "--no-resume")
        plain_t.append(plain["seconds"])
        baas.delete_image(plain["uuid"])
        log(f"  baas image push --no-resume: {plain['seconds']:.2f} s ({_phases(plain['answer'])})")
        created = baas.create_image(f"bench-cli-resume-{i}")
        held = cli.push_killed_at_half(created["uuid"], image.raw)
        sync_all()
        seconds, answer = cli.push(created["uuid"], image.raw)
        if answer.get("size") != image.size or answer["transfer"]["resumed_from"] != held:
            raise SystemExit(f"the resumed push did not resume from {held}: {answer}")
        resumed_t.append(seconds)
        resumed_sent.append(answer["transfer"]["sent"])
        cpu["resumed"].append(sum(answer["cpu"].values()))
        baas.delete_image(created["uuid"])
        log(f"  baas image push, resumed at {held / MiB:.0f} MiB: {seconds:.2f} s "
            f"({resumed_sent[-1] / MiB:.0f} MiB sent; {_phases(answer)})")  # fmt: skip
    rows = _push_rows(cp_t, push_t, plain_t, resumed_t, sent, resumed_sent, cpu)
    if pull:
        rows.append(_measure_pull(baas, cli, workdir, checked, image.size, repeat))
    return rows


def _push_rows(cp_t, push_t, plain_t, resumed_t, sent, resumed_sent, cpu) -> list[Row]:
    cp, pu, pl, rs = median(cp_t), median(push_t), median(plain_t), median(resumed_t)
    return [
        Row("baas image push vs cp+sync", pu, cp, pu / cp, "<= 1.0", pu / cp <= 1.0,
            f"a resumable upload of the data alone ({median(sent) / MiB:.0f} MiB sent); "
            "client start-up included", {"baas": push_t, "baseline": cp_t, "sent": sent}),
        Row("  CPU: push (client + server) vs cp+sync", median(cpu["push"]), median(cpu["cp"]),
            median(cpu["push"]) / max(median(cpu["cp"]), 1e-3), "-", None,
            "seconds of CPU, what a loaded machine does not inflate",
            {"baas": cpu["push"], "baseline": cpu["cp"], "resumed": cpu["resumed"]}),
        Row("  baas image push --no-resume vs cp+sync", pl, cp, pl / cp, "-", None,
            "one plain request (the server decodes both the same way)",
            {"baas": plain_t, "baseline": cp_t}),
        Row("resumed push after 50% vs fresh push", rs, pu, rs / pu, "<= 0.55", rs / pu <= 0.55,
            f"{median(resumed_sent) / MiB:.0f} MiB sent after the kill",
            {"resumed": resumed_t, "fresh": push_t, "sent": resumed_sent}),
    ]  # fmt: skip


def _measure_pull(baas: Baas, cli: Cli, workdir: Path, checked: str, size: int,
                  repeat: int) -> Row:  # fmt: skip
    pull_t, curl_t, received = [], [], []
    number = 1
    stored = baas.version_file(checked, number)
    nginx = Nginx(workdir, stored.parent)
    nginx.start()
    try:
        read_through(stored)
        for _ in range(repeat):
            curl_t.append(curl_to_file(f"http://127.0.0.1:{nginx.port}/{stored.name}",
                                       workdir / "curl.img", size))  # fmt: skip
            log(f"  curl -o of the raw file from nginx: {curl_t[-1]:.2f} s")
            seconds, answer = cli.pull(f"{checked}@{number}", workdir / "pulled.img")
            if not answer.get("verified"):
                raise SystemExit(f"baas image pull did not check the ranges: {answer}")
            pull_t.append(seconds)
            received.append(answer["received"])
            log(f"  baas image pull: {seconds:.2f} s ({received[-1] / MiB:.0f} MiB received, "
                f"{allocated(workdir / 'pulled.img') / MiB:.0f} MiB allocated)")  # fmt: skip
    finally:
        nginx.stop()
        for name in ("curl.img", "pulled.img"):
            with contextlib.suppress(FileNotFoundError):
                (workdir / name).unlink()
    pd, cu = median(pull_t), median(curl_t)
    return Row("baas image pull vs curl -o (nginx)", pd, cu, pd / cu, "<= 0.5", pd / cu <= 0.5,
               f"pull: a sparse file, {median(received) / MiB:.0f} MiB received, each range "
               "checked, fsynced; curl: the whole raw file written (not synced)",
               {"baas": pull_t, "baseline": curl_t, "received": received})  # fmt: skip


# --- Report --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    header = f"{'measurement':34} {'BAAS':>9} {'baseline':>9} {'ratio':>6} {'target':>19}  result"
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        verdict = {True: "PASS", False: "FAIL  <<<", None: "info"}[row.ok]
        print(
            f"{row.name:34} {_fmt(row.baas):>9} {_fmt(row.baseline):>9} "
            f"{_fmt(row.ratio):>6} {row.target:>19}  {verdict}"
        )
        if row.detail:
            print(f"{'':36}{row.detail}")
    print("(seconds, medians; MiB where marked; ratio = BAAS / baseline, for downloads the")
    print(" throughput ratio BAAS / nginx)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where everything goes (default: a temp dir)")
    parser.add_argument("--size", default="6G", help="logical image size (default 6G)")
    parser.add_argument("--data", default="600M", help="data in the image (default 600M)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (median)")
    parser.add_argument("--json", type=Path, help="save the results here")
    parser.add_argument("--keep", action="store_true", help="keep the workdir and test data")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the BAAS checkout to run (default: this one)"
    )
    parser.add_argument(
        "--part",
        choices=("all", "uploads", "versions"),
        default="all",
        help="uploads and downloads, ten versions on XFS (bench/versions.py), or both",
    )
    parser.add_argument(
        "--versions-models",
        default="files,scattered",
        help="how the versions change 1 %% of the data: files (gated), scattered (information)",
    )
    parser.add_argument(
        "--only", choices=["all", "cli", "push"], default="all",
        help="cli: only the command-line client's push and pull (and create); push: its pushes",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for tool in ("curl", "zstd", "nginx", "cp"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise SystemExit(f"{tool} is missing: apt-get install -y curl zstd nginx")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    size, data = parse_size(args.size), parse_size(args.data)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="baas-bench-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    for directory in (workdir, run_dir):  # nginx's workers (not root) must reach the files
        directory.chmod(0o755)
    log(f"workdir {workdir}; load average {load_average()}")
    baas = Baas(run_dir, size, args.repo.resolve())
    try:
        with _cleanup(baas, run_dir, workdir, args):
            rows, meta = _measure_all(baas, workdir, run_dir, size, data, args)
    except KeyboardInterrupt:
        return 130
    print_table(rows)
    if args.json:
        results = {"meta": meta, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(results, indent=2, default=str))
        log(f"results saved to {args.json}")
    return 0


def _measure_all(baas: Baas, workdir: Path, run_dir: Path, size: int, data: int, args) -> tuple:
    image = test_image(workdir / "data", size, data, args.seed)
    rows = []
    if args.part in ("all", "versions"):
        import versions  # bench/versions.py, beside this script

        models = [m for m in args.versions_models.split(",") if m]
        lib = sys.modules[__name__]
        rows += versions.measure_versions(lib, image, run_dir, args.repo.resolve(), args.seed,
                                          models)  # fmt: skip
        if args.part == "versions":
            return rows, {"seed": args.seed, "load_average_end": load_average(),
                          "cpus": os.cpu_count()}  # fmt: skip
    log(f"BAAS on 127.0.0.1:{baas.port} ({baas.database}, DEBUG off, gunicorn.conf.py)")
    baas.setup()
    baas.start()
    rows.append(measure_create(baas, args.repeat, size))
    log(f"create: {rows[-1].baas:.3f} s")
    if args.only == "all":
        log(f"uploads ({args.repeat}x each, interleaved), load {load_average()}")
        upload_rows, keep_uuid = measure_uploads(baas, image, run_dir, args.repeat)
        rows += upload_rows
        log(f"downloads ({args.repeat}x each), load {load_average()}")
        try:
            rows.append(measure_download(baas, run_dir, keep_uuid, args.repeat))
        except SystemExit as exc:  # e.g. a checkout without downloads: report it, keep the rest
            rows.append(Row("download vs nginx (throughput)", None, None, None, ">= 0.9", False,
                            f"not measured: {exc}"))  # fmt: skip
    log(f"the command-line client ({args.repeat}x each, interleaved), load {load_average()}")
    rows += measure_cli(baas, image, run_dir, args.repeat, pull=args.only != "push")
    meta = {
        "size": size,
        "data_blocks": image.data,
        "written": image.written,
        "zst_size": image.zst_size,
        "extents": image.extents,
        "seed": args.seed,
        "repeat": args.repeat,
        "database": baas.database,
        "load_average_end": load_average(),
        "cpus": os.cpu_count(),
    }
    log(
        f"test image: {image.written / MiB:.0f} MiB written in {image.extents} extents, "
        f"{image.data / MiB:.0f} MiB of non-zero blocks, zstd {image.zst_size / MiB:.0f} MiB"
    )
    return rows, meta


@contextlib.contextmanager
def _cleanup(baas: Baas, run_dir: Path, workdir: Path, args) -> Iterator[None]:
    try:
        yield
    finally:
        baas.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                shutil.rmtree(workdir / "data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
