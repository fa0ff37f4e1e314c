"""Fixtures of the flashing tests: the end-to-end rig (tests/flashing/e2e.py)."""

from __future__ import annotations

import pytest

from flashing.models import MachineState
from tests.flashing.e2e import make_rig
from tests.flashing.factories import LeaseFactory, MachineFactory


@pytest.fixture
def machine(user):
    """A machine leased by ``user``."""
    machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=machine, user=user)
    return machine


@pytest.fixture
def rig(celery_worker, live_server, tmp_path, administrator):
    yield from make_rig(live_server, tmp_path, administrator)


@pytest.fixture
def start_worker(celery_worker, tmp_path):
    """Start Celery workers of this test's own (killable) on a queue of its own."""
    import subprocess
    import sys
    import uuid

    from baas_site.celery import app
    from tests import celery_worker as shared

    queue = f"baas-test-{uuid.uuid4().hex[:12]}"
    app.conf.task_default_queue = queue
    shared._reset_producers(app)
    started: list[shared.CeleryWorker] = []

    def start() -> shared.CeleryWorker:
        logfile = tmp_path / f"worker-{len(started)}.log"
        command = [
            *(sys.executable, "-c", shared.WORKER_MAIN, queue, "worker"),
            *("--pool", "solo", "--queues", queue, "--hostname", f"{queue}-{len(started)}@%h"),
            *("--loglevel", "INFO", "--logfile", str(logfile)),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]
        process = subprocess.Popen(
            command,
            cwd=shared.ROOT,
            env=shared._worker_env(celery_worker.disk_root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        worker = shared.CeleryWorker(
            queue, shared.REDIS_URL, celery_worker.disk_root, logfile, process
        )
        started.append(worker)
        shared._wait_ready(worker)
        return worker

    yield start
    for worker in started:
        shared._stop(worker)
    app.conf.task_default_queue = celery_worker.queue
    shared._reset_producers(app)
    shared._forget_queue(queue)
