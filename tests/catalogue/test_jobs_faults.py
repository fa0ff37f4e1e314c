"""Faults leave no debris and lose no job: with real processes killed (kill -9), the sweep
sends a dead job again and removes the ``.part`` files no live writer holds; the periodic
queue is served while a long job occupies the long queue."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis

from catalogue.models import Compression, Version
from catalogue.services.pipeline import versions_processing_sweep
from catalogue.services.processing import storage_audit
from catalogue.storage import PART_SUFFIX, get_storage
from catalogue.tasks import purge_stale_uploads_task
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_compression import wait_for
from tests.catalogue.test_uploads import post_raw
from tests.celery_worker import REDIS_URL, ROOT, session_queues

MiB = 1 << 20

# A writer of an upload in a process of its own, as gunicorn's: it prints its .part and waits.
WRITER = (
    "import sys, time, uuid; from catalogue.storage import LocalStorage; "
    "pending = LocalStorage(sys.argv[1]).open_write(uuid.UUID(sys.argv[2])); "
    "pending.write(b'half an upload' * 1000); print(pending.path, flush=True); time.sleep(600)"
)


def start_writer(root, image_uuid) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(image_uuid)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()


def parts_of(image) -> list:
    directory = get_storage().image_dir(image.uuid)
    return sorted(directory.glob(f".*{PART_SUFFIX}")) if directory.exists() else []


def test_a_part_held_by_a_killed_writer_is_removed_and_a_live_one_kept(settings, disk_root):
    settings.BAAS_STALE_UPLOAD_SECONDS = 60
    image_uuid = uuid.uuid4()
    killed, killed_part = start_writer(disk_root, image_uuid)
    alive, alive_part = start_writer(disk_root, image_uuid)
    try:
        for part in (killed_part, alive_part):
            os.utime(part, (time.time() - 120, time.time() - 120))  # past the grace
        assert purge_stale_uploads_task() == 0  # both writers live: both kept

        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert purge_stale_uploads_task() == 1
        assert not os.path.exists(killed_part)
        assert os.path.exists(alive_part)  # its writer still holds it, however old
    finally:
        for process in (killed, alive):
            process.kill()
            process.wait()
            process.stdout.close()


@pytest.mark.worker
def test_a_worker_killed_mid_compression_has_its_job_sent_again_and_finished(
    start_worker, user, user_client
):
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    data = os.urandom(96 * MiB)  # gzip takes seconds over it: time to kill the worker
    first = start_worker()
    response = post_raw(user_client, image, data)
    assert response.status_code == 201, response.json()
    version = Version.objects.get(image=image, number=response.json()["version"])

    wait_for(lambda: any(p.stat().st_size > 4 * MiB for p in parts_of(image)), 120, "a .part")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    version.refresh_from_db()
    assert version.stored_compression == Compression.NONE
    assert parts_of(image), "the killed job left its .part"
    assert version.job_sent_at is not None  # still owed

    assert versions_processing_sweep()["resent"] == [version.pk]
    leftovers = parts_of(image)
    assert get_storage().purge_stale(older_than_seconds=0) == leftovers  # its writer is dead
    start_worker()

    def processed() -> bool:
        version.refresh_from_db()
        return version.stored_compression == Compression.GZIP and version.job_sent_at is None

    wait_for(processed, 180, "the job sent again")  # and nothing owed any more
    assert not version.damaged
    assert not parts_of(image)
    audit = storage_audit()
    assert not [name for name in audit.stray_files if name.startswith(str(image.uuid))]
    assert (str(image.uuid), version.number) not in {m[:2] for m in audit.missing_files}


@pytest.mark.worker
def test_periodic_jobs_are_served_while_a_long_job_occupies_the_long_queue(
    start_worker, user, user_client, settings
):
    long_worker = start_worker([settings.BAAS_LONG_QUEUE])
    start_worker([settings.CELERY_TASK_DEFAULT_QUEUE, settings.BAAS_PERIODIC_QUEUE])
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    storage = get_storage()
    # Hold the version's job lock: its compression job waits, occupying the long worker.
    lock_path = storage.root / ".locks" / str(image.uuid)
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "a+b") as lock:
        fcntl.lockf(lock.fileno(), fcntl.LOCK_EX, 1, 1)
        response = post_raw(user_client, image, os.urandom(MiB))
        assert response.status_code == 201, response.json()
        version = Version.objects.get(image=image, number=1)
        long_queue = session_queues(long_worker.queue)[settings.BAAS_LONG_QUEUE]
        queued = redis.Redis.from_url(REDIS_URL)
        wait_for(lambda: queued.llen(long_queue) == 0, 60, "the long worker to take the job")

        abandoned = storage.open_write(image.uuid)
        abandoned._file.close()  # its writer is gone
        os.utime(abandoned.path, (1, 1))  # long ago
        purge_stale_uploads_task.delay()  # as beat sends it
        wait_for(lambda: not abandoned.path.exists(), 60, "the periodic job")
        version.refresh_from_db()
        assert version.stored_compression == Compression.NONE  # the long job still waits

        fcntl.lockf(lock.fileno(), fcntl.LOCK_UN, 1, 1)

    def compressed() -> bool:
        version.refresh_from_db()
        return version.stored_compression == Compression.GZIP

    wait_for(compressed, 60, "the long job")
