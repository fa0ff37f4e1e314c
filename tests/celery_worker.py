"""A real Celery worker for integration tests: a subprocess on Redis.

``celery_worker`` (function scope) gives a test a worker, the equivalent of
``celery -A baas_site worker --pool solo -Q <queue>``, against:

* Redis at ``BAAS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``), on
  this session's own version of every queue of the settings (the default,
  periodic and long queues, ``<session>.<queue>``, routed as the settings
  route them), so parallel runs never take each other's tasks;
* the very test database pytest-django created (its name is only known once
  ``django_db_setup`` ran), so tests using it need committed rows:
  ``transactional_db`` is requested for them;
* the same image root: the test's ``BAAS_DISK_ROOT`` is switched to the
  worker's for the duration of the test.

The test process itself sends its tasks to that Redis and queue. The worker is
started once per session (a few seconds) and shut down warmly at the end.
Mark tests using it ``@pytest.mark.worker``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.conf import settings as django_settings

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("BAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
READY_TIMEOUT = 60.0
# ``celery -A baas_site worker …``, but with every queue renamed for the session
# (argv[1] is its prefix), so tasks the worker itself sends stay on them.
WORKER_MAIN = (
    "import sys; from baas_site.celery import app; from tests.celery_worker import "
    "use_session_queues; use_session_queues(app, sys.argv[1]); app.worker_main(sys.argv[2:])"
)
STOP_TIMEOUT = 30.0


def session_queues(prefix: str) -> dict[str, str]:
    """Every queue of the settings (its name in production) and its name in a session."""
    routed = {route["queue"] for route in django_settings.CELERY_TASK_ROUTES.values()}
    names = {django_settings.CELERY_TASK_DEFAULT_QUEUE, *routed}
    return {name: f"{prefix}.{name}" for name in sorted(names)}


def use_session_queues(app, prefix: str) -> None:
    """Have ``app`` send to (and a worker of it take from) the session's queues."""
    queues = session_queues(prefix)
    app.conf.task_default_queue = queues[django_settings.CELERY_TASK_DEFAULT_QUEUE]
    app.conf.task_routes = {
        name: {**route, "queue": queues[route["queue"]]}
        for name, route in django_settings.CELERY_TASK_ROUTES.items()
    }


@dataclass(frozen=True)
class CeleryWorker:
    queue: str  # the session's prefix: its queues are session_queues(queue)
    broker_url: str
    disk_root: Path
    logfile: Path
    process: subprocess.Popen

    def log(self) -> str:
        """The worker's log, then whatever it wrote to stdout/stderr (start-up errors)."""
        paths = (self.logfile, self.logfile.with_suffix(".out"))
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())


def database_url(db: dict) -> str:
    """A DATABASE_URL (django-environ) for a Django database settings dict."""
    if "postgresql" not in db["ENGINE"]:
        pytest.skip("A worker process needs a server database: set DATABASE_URL=postgres://…")
    user = quote(db.get("USER") or "", safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(db['NAME'], safe='')}"


def _check_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}): start it, set "
            "BAAS_TEST_REDIS_URL, or deselect these tests with -m 'not worker'."
        )


def _worker_env(disk_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(
        DJANGO_SETTINGS_MODULE="baas_site.settings",
        DATABASE_URL=database_url(django_settings.DATABASES["default"]),
        CELERY_BROKER_URL=REDIS_URL,
        BAAS_DISK_ROOT=str(disk_root),
        # Network mounts' base copies and overlays, beside the image root.
        BAAS_NBD_DIR=str(disk_root.with_name(f"{disk_root.name}-nbd")),
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_ready(worker: CeleryWorker) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            pytest.fail(f"The Celery worker exited early:\n{worker.log()}")
        if " ready." in worker.log():
            return
        time.sleep(0.1)
    _stop(worker)
    pytest.fail(f"The Celery worker was not ready after {READY_TIMEOUT} s:\n{worker.log()}")


def _stop(worker: CeleryWorker) -> None:
    """Warm shutdown (SIGTERM: finish the current task), then SIGKILL if it hangs."""
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def _forget_queue(prefix: str) -> None:
    """Remove the session's queues and their bindings from Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    for queue in session_queues(prefix).values():
        client.delete(queue)
    for key in client.scan_iter(match="_kombu.binding.*"):
        for member in client.smembers(key):
            if prefix.encode() in member:
                client.srem(key, member)


def worker_command(prefix: str, logfile: Path, *, name: str, queues: list[str] | None) -> list:
    """The command line of a worker of the session ``prefix``, on the session's versions of
    ``queues`` (production names; None: every queue)."""
    names = session_queues(prefix)
    serving = [names[q] for q in queues] if queues is not None else list(names.values())
    return [
        *(sys.executable, "-c", WORKER_MAIN, prefix, "worker"),
        *("--pool", "solo", "--queues", ",".join(serving), "--hostname", f"{name}@%h"),
        *("--loglevel", "INFO", "--logfile", str(logfile)),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One worker process for the session, on its own queue and image root."""
    _check_redis()
    queue = f"baas-test-{uuid.uuid4().hex[:12]}"
    disk_root = tmp_path_factory.mktemp("worker-disk")
    logfile = tmp_path_factory.mktemp("worker-log") / "celery.log"
    command = worker_command(queue, logfile, name=queue, queues=None)
    with logfile.with_suffix(".out").open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=_worker_env(disk_root), stdout=output, stderr=output
        )
    worker = CeleryWorker(queue, REDIS_URL, disk_root, logfile, process)
    try:
        _wait_ready(worker)
        yield worker
    finally:
        _stop(worker)
        _forget_queue(queue)


def _reset_producers(app) -> None:
    """Forget cached broker connections and queue declarations after a conf change.

    The pools themselves are kombu's, shared and keyed by broker URL: they
    are dropped here, not closed, so the next test can use them again.
    """
    app._pool = None
    app.__dict__.pop("amqp", None)


@pytest.fixture
def celery_worker(celery_worker_process: CeleryWorker, transactional_db, settings):
    """The session's worker, with this process sending to it and sharing its image root."""
    from baas_site.celery import app

    settings.BAAS_DISK_ROOT = celery_worker_process.disk_root
    saved = {
        key: app.conf[key]
        for key in ("broker_url", "task_default_queue", "task_routes", "broker_transport_options")
    }
    app.conf.update(broker_url=REDIS_URL, broker_transport_options={"visibility_timeout": 3600})
    use_session_queues(app, celery_worker_process.queue)
    _reset_producers(app)
    try:
        yield celery_worker_process
    finally:
        app.conf.update(saved)
        _reset_producers(app)
        if celery_worker_process.process.poll() is not None:
            pytest.fail(f"The Celery worker died:\n{celery_worker_process.log()}")


@pytest.fixture
def start_worker(celery_worker: CeleryWorker, tmp_path: Path):
    """Start Celery workers of this test's own (killable), on queues of its own.

    ``start(queues=None)`` starts one serving the test's versions of ``queues``
    (production names, e.g. ``[settings.BAAS_LONG_QUEUE]``; None: every queue)
    and returns it once ready. The test's tasks go to its queues meanwhile.
    """
    from baas_site.celery import app

    prefix = f"baas-test-{uuid.uuid4().hex[:12]}"
    use_session_queues(app, prefix)
    _reset_producers(app)
    started: list[CeleryWorker] = []

    def start(queues: list[str] | None = None) -> CeleryWorker:
        logfile = tmp_path / f"worker-{len(started)}.log"
        command = worker_command(prefix, logfile, name=f"{prefix}-{len(started)}", queues=queues)
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_worker_env(celery_worker.disk_root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        worker = CeleryWorker(prefix, REDIS_URL, celery_worker.disk_root, logfile, process)
        started.append(worker)
        _wait_ready(worker)
        return worker

    yield start
    for worker in started:
        _stop(worker)
    use_session_queues(app, celery_worker.queue)
    _reset_producers(app)
    _forget_queue(prefix)
