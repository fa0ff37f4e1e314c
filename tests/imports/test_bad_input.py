"""Bad imports: each refused with a reason a person can act on, and nothing stored."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from accounts.models import User
from imports.models import ImportJob, State
from imports.services import jobs
from imports.services.progress import Progress
from tests.imports.helpers import run_import


def assert_nothing_stored(image, work_dir: Path) -> None:
    assert not image.versions.exists()
    assert not list(work_dir.glob("job-*")), "the job's work folder is removed"
    image_dir = Path(image.uuid.hex)
    assert not list(Path().glob(f"{image_dir}/*.part"))


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("absolute", "absolute path '/etc/passwd'"),
        ("escaping", "'../../escaped', which leads out of the root"),
        ("hardlink", "hard link target '../../etc/shadow', which leads out of the root"),
        ("device", "device node 'dev/sda'"),
        ("setuid", "set-user-ID to user 1000"),
    ],
)
def test_a_hostile_layer_is_refused_naming_the_member(
    name, words, system_image, moderator, images, import_settings
):
    job = run_import(moderator, system_image, oci=images[name])
    assert job.state == State.FAILED
    assert words in job.reason and job.reason.startswith("Layer 1 ")
    assert "Nothing was stored" in job.reason
    assert_nothing_stored(system_image, import_settings)


def test_an_unknown_tag_is_refused(system_image, moderator, registry, import_settings):
    job = run_import(moderator, system_image, oci=f"docker://{registry.host}/test/simple:nope")
    assert job.state == State.FAILED
    assert "The registry has no image" in job.reason and ":nope" in job.reason
    assert_nothing_stored(system_image, import_settings)


def test_an_unknown_repository_is_refused(system_image, moderator, registry):
    job = run_import(moderator, system_image, oci=f"docker://{registry.host}/no/such:v1")
    assert job.state == State.FAILED and "The registry has no image" in job.reason


def test_a_registry_that_is_down_is_refused(system_image, moderator, settings, import_settings):
    from tests.imports.oci import free_port

    port = free_port()  # nothing listens there
    settings.BAAS_IMPORT_INSECURE_REGISTRIES = [f"127.0.0.1:{port}"]
    job = run_import(moderator, system_image, oci=f"docker://127.0.0.1:{port}/test/simple:v1")
    assert job.state == State.FAILED
    assert "cannot be reached" in job.reason
    assert_nothing_stored(system_image, import_settings)


def test_a_registry_on_a_private_address_is_refused_unless_allowed(
    system_image, moderator, settings, registry
):
    settings.BAAS_IMPORT_ALLOWED_HOSTS = []
    settings.ALLOWED_HOSTS = ["baas.example.org"]
    job = run_import(moderator, system_image, oci=f"docker://{registry.host}/test/simple:v1")
    assert job.state == State.FAILED
    assert "non-public address" in job.reason and "BAAS_IMPORT_ALLOWED_HOSTS" in job.reason


def test_layers_unpacking_past_the_quota_are_stopped_by_their_check(
    system_image, moderator, images, import_settings
):
    """The check reads the layers' headers while umoci unpacks: the first header past the
    quota stops both, and the job says why (not umoci's folder size, found later)."""
    User.objects.filter(pk=moderator.pk).update(storage_quota=8 * 1024 * 1024)
    system_image.owner.refresh_from_db()
    job = run_import(moderator, system_image, oci=images["bomb"])
    assert job.state == State.FAILED
    assert "unpack to more than" in job.reason and "storage quota" in job.reason
    assert "Stopped while checking them" in job.reason
    assert "Every layer passed" not in job.log and "Making" not in job.log
    assert_nothing_stored(system_image, import_settings)


def test_layers_past_the_size_limit_are_refused_before_pulling(
    system_image, moderator, images, settings, import_settings
):
    settings.BAAS_MAX_IMAGE_SIZE = 1024 * 1024  # less than the compressed layers
    job = run_import(moderator, system_image, oci=images["random"])
    assert job.state == State.FAILED
    assert "Nothing was pulled" in job.reason
    assert "largest image this server accepts" in job.reason
    assert_nothing_stored(system_image, import_settings)


def test_a_filesystem_too_small_for_the_files_is_refused(system_image, moderator, images):
    job = run_import(moderator, system_image, oci=images["random"], size=4 * 1024 * 1024)
    assert job.state == State.FAILED
    assert "do not fit in a filesystem of 4194304 bytes" in job.reason


def test_the_watch_stops_a_pull_once_its_folder_passes_the_limit(system_image, tmp_path):
    """What stops skopeo and umoci mid-way: the folder they write, measured each half second."""
    job = ImportJob.objects.create(image=system_image, kind="oci", source="docker://x/y:z")
    progress = Progress(job)
    folder = tmp_path / "layout"
    folder.mkdir()
    watch = progress.watch(folder, 1024 * 1024, "pulled")
    assert watch() is None
    (folder / "blob").write_bytes(os.urandom(2 * 1024 * 1024))
    reason = watch()
    assert reason is not None and "while it was being pulled" in reason
    job.refresh_from_db()
    assert job.bytes_done >= 2 * 1024 * 1024


def test_a_running_import_is_cancelled_and_its_tool_stopped(
    system_image, moderator, images, monkeypatch, import_settings
):
    """The watch sees the cancel while a tool runs (here: mke2fs), stops it, stores nothing."""
    from imports.services import oci

    job = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["bomb"])
    )
    real = oci.run_tool

    def slow_mke2fs(args, *, watch, **kw):
        if args[0] == "mke2fs":  # a long step: the cancel arrives while it runs
            ImportJob.objects.filter(pk=job.pk).update(cancel_requested=True)
            return real(["sleep", "30"], watch=watch)
        return real(args, watch=watch, **kw)

    monkeypatch.setattr(oci, "run_tool", slow_mke2fs)
    began = time.monotonic()
    jobs.import_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == State.CANCELLED, job.reason
    assert time.monotonic() - began < 15, "the tool was stopped, not waited for"
    assert_nothing_stored(system_image, import_settings)


def test_a_queued_import_cancels_at_once(system_image, moderator, images):
    job = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["simple"])
    )
    cancelled = jobs.import_cancel(actor=moderator, job_id=job.pk)
    assert cancelled.state == State.CANCELLED
    assert jobs.import_run(job_id=job.pk).state == State.CANCELLED  # the message still comes
    assert not system_image.versions.exists()


def test_an_import_whose_worker_died_is_failed_by_the_sweep(
    system_image, moderator, images, import_settings, settings
):
    from datetime import timedelta

    from django.utils import timezone

    job = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["simple"])
    )
    long_ago = timezone.now() - timedelta(seconds=settings.BAAS_IMPORT_TIMEOUT + 1000)
    ImportJob.objects.filter(pk=job.pk).update(state=State.RUNNING, started_at=long_ago)
    (import_settings / f"job-{job.pk}").mkdir(parents=True)
    fresh = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["simple"])
    )
    ImportJob.objects.filter(pk=fresh.pk).update(state=State.RUNNING, started_at=timezone.now())
    assert jobs.imports_sweep() == 1
    job.refresh_from_db()
    fresh.refresh_from_db()
    assert job.state == State.FAILED and "worker running this import stopped" in job.reason
    assert fresh.state == State.RUNNING
    assert not (import_settings / f"job-{job.pk}").exists()


def test_an_uploaded_archive_whose_job_no_worker_took_is_removed_by_the_sweep(
    system_image, moderator, import_settings
):
    from datetime import timedelta

    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone

    job = jobs.import_create(
        actor=moderator,
        image=system_image,
        request=jobs.ImportRequest(oci="oci-archive:"),
        archive=SimpleUploadedFile("image.tar", b"x" * 4096),
    )
    archive = import_settings / f"job-{job.pk}" / "archive.tar"
    assert archive.is_file()
    assert jobs.imports_sweep() == 0 and archive.is_file(), "a job that waits keeps it"
    ImportJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=2))
    assert jobs.imports_sweep() == 1
    job.refresh_from_db()
    assert job.state == State.FAILED and "No worker started this import" in job.reason
    assert not archive.parent.exists()
    assert jobs.import_run(job_id=job.pk).state == State.FAILED  # a late message does nothing


def test_the_sweep_removes_folders_left_by_jobs_that_ended_or_are_gone(
    system_image, moderator, images, import_settings
):
    ended = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["simple"])
    )
    ImportJob.objects.filter(pk=ended.pk).update(state=State.FAILED)
    waiting = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["simple"])
    )
    folders = {
        name: import_settings / f"job-{pk}"
        for name, pk in [("ended", ended.pk), ("waiting", waiting.pk), ("new", 10**8),
                         ("gone", 10**8 + 1)]
    }  # fmt: skip
    for folder in folders.values():
        folder.mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(folders["gone"], (old, old))
    assert jobs.imports_sweep() == 0
    assert not folders["ended"].exists() and not folders["gone"].exists()
    assert folders["waiting"].exists(), "the folder of a job that may still run stays"
    assert folders["new"].exists(), "a row not committed yet may own it"


def test_a_cancel_during_the_store_stops_it_and_stores_nothing(
    system_image, moderator, images, monkeypatch, import_settings
):
    """The last step reads the whole filesystem; a cancel that comes meanwhile stops it."""
    from catalogue.storage import get_storage
    from imports.services import registry

    job = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["random"])
    )
    real = registry.version_store_file

    def cancelled_while_storing(**kw):
        jobs.import_cancel(actor=moderator, job_id=job.pk)  # as the API does, while it stores
        return real(**kw)

    monkeypatch.setattr(registry, "version_store_file", cancelled_while_storing)
    jobs.import_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == State.CANCELLED, job.reason
    assert "Storing it" in job.log
    assert_nothing_stored(system_image, import_settings)
    image_dir = get_storage().image_dir(system_image.uuid)
    assert not image_dir.exists() or not list(image_dir.iterdir()), "no pending file left"
