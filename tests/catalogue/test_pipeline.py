"""The version pipeline's own promises: one step a run, in an order that reads the image
least; idempotent, alone or at once; a killed worker's step resumed by the sweep; a damaged
version stopped with its reason; no version left owing work."""

from __future__ import annotations

import os
import signal

import pytest

from catalogue.models import Compression, FileStandard, Version
from catalogue.services.codecs import VersionCorrupt
from catalogue.services.compression import needs_frames
from catalogue.services.datamaps import version_map, version_map_build
from catalogue.services.pipeline import (
    Owed,
    version_owed,
    version_process,
    version_state,
    versions_map_missing,
    versions_processing_sweep,
)
from catalogue.storage import get_storage
from catalogue.tasks import version_advance_task
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.catalogue.test_compression import CONTENT, stored_as, wait_for
from tests.catalogue.test_jobs_faults import parts_of
from tests.catalogue.test_uploads import post_raw

MiB = 1 << 20


def advance(version: Version) -> str:
    """One run of the task, in-process (what it sends next is not run here)."""
    return version_advance_task.apply(args=[version.pk]).get()


def processed(version: Version) -> bool:
    version.refresh_from_db()
    return version_state(version) == "ready" and version.job_sent_at is None


# --- The order, and one step a run ----------------------------------------------------------


@pytest.mark.django_db
def test_a_version_without_its_digest_is_digested_and_mapped_in_one_read():
    version = VersionFactory(image=ImageFactory(), number=1, content=CONTENT)
    sha256 = version.sha256
    Version.objects.filter(pk=version.pk).update(sha256="")
    version.refresh_from_db()
    assert version_owed(version) == Owed("received", "digest")

    assert advance(version) == "digest: ready"  # the digest step records the map as well
    version.refresh_from_db()
    assert version.sha256 == sha256 and version_map(version) is not None
    assert advance(version) == "nothing: ready"


@pytest.mark.django_db
def test_a_version_to_recompress_without_its_digest_is_digested_by_the_compression():
    version = VersionFactory(image=ImageFactory(compression=Compression.GZIP), content=CONTENT)
    version_map_build(version_id=version.pk)
    sha256 = version.sha256
    Version.objects.filter(pk=version.pk).update(sha256="")
    version.refresh_from_db()
    assert version_owed(version) == Owed("received", "compress")  # one pass for both

    assert advance(version) == "compress: ready"
    version.refresh_from_db()
    assert version.sha256 == sha256 and version.stored_compression == Compression.GZIP


@pytest.mark.django_db
def test_a_zstd_version_is_mapped_before_it_is_stored_so_it_is_written_in_frames_once():
    version = VersionFactory(image=ImageFactory(compression=Compression.ZSTD), content=CONTENT)
    assert version_state(version) == "digested"

    assert [advance(version) for _ in range(3)] == [
        "map: mapped",
        "compress: ready",
        "nothing: ready",
    ]
    assert stored_as(version, Compression.ZSTD) and not needs_frames(version)


# --- Sending --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_is_sent_after_the_commit_with_a_budget_for_what_it_reads(
    settings, django_capture_on_commit_callbacks
):
    settings.BAAS_JOB_TIME_BASE, settings.BAAS_JOB_MIN_RATE = 60, MiB
    version = VersionFactory(image=ImageFactory(compression=Compression.GZIP), content=CONTENT)
    with django_capture_on_commit_callbacks() as sent:
        assert version_process(version.pk)
        version.refresh_from_db()
        assert version.job_sent_at is not None  # owed from now on
    (send,) = sent  # not before the commit
    assert send.keywords["soft_time_limit"] == 60 + version.stored_size // MiB

    qcow2 = VersionFactory(image=ImageFactory(file_standard=FileStandard.QCOW2), content=CONTENT)
    version_map_build(version_id=qcow2.pk)
    with django_capture_on_commit_callbacks() as sent:
        assert version_process(qcow2.pk)  # its raw disk: qemu-img has its own time limit
    assert sent[0].keywords["soft_time_limit"] == settings.CELERY_TASK_SOFT_TIME_LIMIT


# --- Idempotent -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_running_the_task_again_on_a_ready_version_does_nothing(django_capture_on_commit_callbacks):
    version = VersionFactory(image=ImageFactory(compression=Compression.GZIP), content=CONTENT)
    while advance(version) != "nothing: ready":
        pass
    stored = get_storage().version_path(version.image_id, version.number, Compression.GZIP)
    before = stored.stat()

    with django_capture_on_commit_callbacks() as sent:
        assert advance(version) == "nothing: ready"
        assert not version_process(version.pk)  # and nothing to send
    assert sent == []
    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.worker
def test_two_workers_sent_the_same_version_at_once_do_the_work_once(start_worker, user):
    first, second = start_worker(), start_worker()
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    version = VersionFactory(image=image, number=1, content=os.urandom(24 * MiB) + CONTENT)
    for _ in range(4):  # as a duplicate delivery, a sweep and a retry all at once would
        version_advance_task.delay(version.pk)

    wait_for(lambda: processed(version), 180, "the pipeline")
    logs = first.log() + second.log()
    assert logs.count("is now stored as gzip") == 1, logs  # under the job lock, once
    assert logs.count(f"Data map of version {version.pk}:") == 1, logs
    assert not parts_of(image), logs


# --- A worker killed mid-step ----------------------------------------------------------------


@pytest.mark.worker
def test_a_worker_killed_mid_step_is_resumed_by_the_sweep_from_that_step(
    start_worker, user, user_client
):
    image = ImageFactory(owner=user, compression=Compression.GZIP)
    first = start_worker()
    response = post_raw(user_client, image, os.urandom(96 * MiB))
    assert response.status_code == 201, response.json()
    version = Version.objects.get(image=image, number=response.json()["version"])
    assert version_state(version) == "mapped"  # digested and mapped while it streamed

    wait_for(lambda: any(p.stat().st_size > 4 * MiB for p in parts_of(image)), 120, "a .part")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    assert version_state(version) == "mapped"  # the step it died in is still owed

    assert versions_processing_sweep()["resent"] == [version.pk]
    get_storage().purge_stale(older_than_seconds=0)
    second = start_worker()
    wait_for(lambda: processed(version), 180, "the step sent again")
    assert second.log().count("Data map of version") == 0  # nothing done twice
    assert versions_processing_sweep() == {"resent": [], "damaged": [], "done": []}


# --- A damaged version ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_damaged_version_stops_with_its_reason(django_capture_on_commit_callbacks):
    version = VersionFactory(image=ImageFactory(compression=Compression.GZIP), content=CONTENT)
    Version.objects.filter(pk=version.pk).update(sha256="0" * 64)  # not what its file holds
    version.refresh_from_db()

    assert advance(version) == "map: mapped"
    with pytest.raises(VersionCorrupt):
        advance(version)  # the compression finds it out: nothing swapped, no retry

    version.refresh_from_db()
    assert version_state(version) == "damaged"
    assert f"not {version.size} bytes with {'0' * 64}" in version.damaged
    assert version.stored_compression == Compression.NONE
    with django_capture_on_commit_callbacks() as sent:
        assert advance(version) == "nothing: damaged"
        assert not version_process(version.pk)
        assert versions_processing_sweep()["resent"] == []
    assert sent == []


# --- Nothing left owing ------------------------------------------------------------------


@pytest.mark.worker
def test_after_uploads_of_every_kind_no_version_owes_work(
    celery_worker, user, user_client, settings
):
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = MiB  # past it, the SHA-256 is left to the job
    uploads = [
        (Compression.NONE, CONTENT[: MiB // 2]),  # small, hashed while it streams: ready at once
        (Compression.NONE, CONTENT),  # its digest left to the pipeline
        (Compression.GZIP, CONTENT),  # digested while it is compressed
        (Compression.ZSTD, CONTENT),  # digested, then laid out in frames of its map
    ]
    versions = []
    for compression, data in uploads:
        image = ImageFactory(owner=user, compression=compression)
        response = post_raw(user_client, image, data)
        assert response.status_code == 201, response.json()
        versions.append(Version.objects.get(image=image, number=response.json()["version"]))

    wait_for(lambda: all(processed(v) for v in versions), 180, "the pipeline")
    for version, (compression, _) in zip(versions, uploads, strict=True):
        assert version.stored_compression == compression and version.sha256
        assert version_map(version) is not None and not needs_frames(version)
    assert versions_processing_sweep() == {"resent": [], "damaged": [], "done": []}
    assert versions_map_missing() == []
