"""A throwaway BAAS of its own (var dir, image root, database, user, token, gunicorn on a
free loopback port) and the sampler of its workers' memory."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from _lib.servers import send_file
from _lib.util import GUNICORN, PYTHON, REPO, USERNAME, free_port, run, timed


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
