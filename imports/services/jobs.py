"""Import jobs: created for someone who may import (check, then act), run on a worker,
cancelled at any time.

:func:`import_create` checks the request and the actor's right, records a
queued :class:`~imports.models.ImportJob` and sends :data:`import_run_task`
after the commit, with any registry credentials sealed in the message
(:mod:`.secrets`), never in the row. :func:`import_run` takes the job (row
lock, so a redelivered message does not run it twice), pulls and builds in a
folder of its own under ``BAAS_IMPORT_WORK_DIR``, hands the result to the
catalogue's upload path (``catalogue.interface``) with its provenance, and
always removes the folder. :func:`import_cancel` marks the job; the worker's
watch stops the running tool within a second.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.services import audit_record
from baas_site.exceptions import DomainError
from baas_site.tasks import TransactionAwareTask
from catalogue.models import FileStandard, Image, Version
from imports import rules
from imports.exceptions import (
    ImportConflict,
    ImportForbidden,
    ImportInvalid,
    ImportNotFound,
    ImportStopped,
)
from imports.models import ImportJob as Job
from imports.models import Kind, Layout, State
from imports.services import oci, registry, secrets, urls
from imports.services.progress import Progress
from imports.services.tools import ToolStopped

logger = logging.getLogger(__name__)

HIDDEN = "{'job_id': …, 'sealed': '(credentials hidden)'}"


@dataclass(frozen=True)
class ImportRequest:
    """What a person asks for; exactly one of ``oci`` and ``url``."""

    oci: str = ""
    url: str = ""
    platform: str = "linux/amd64"
    layout: str = Layout.FILESYSTEM
    size: int | None = None
    label: str = "root"
    sha256: str = ""
    username: str = ""
    password: str = ""


def import_create(
    *, actor: Any, image: Image, request: ImportRequest, archive: UploadedFile | None = None
) -> Job:
    """A queued import into ``image``; its job runs after the commit.

    Raises ImportForbidden (the actor may read the image but not upload to it),
    ImportInvalid (the request is malformed).
    """
    if not rules.can_import_image(actor, image):
        raise ImportForbidden(
            "You may read this image but not import into it: importing is for whoever may "
            "upload to it (for a system image, its moderators and administrators)."
        )
    _validate(image, request, archive)
    with transaction.atomic():
        job = Job.objects.create(
            image=image,
            created_by=actor if getattr(actor, "pk", None) else None,
            kind=Kind.OCI if request.oci else Kind.URL,
            source=(request.oci or request.url).strip(),
            platform=request.platform if request.oci else "",
            layout=request.layout if request.oci else "",
            size=request.size,
            label=request.label if request.oci else "",
            sha256=request.sha256.lower(),
        )
        if archive is not None:
            _keep_archive(job, archive)
        audit_record(
            actor=actor, action="image.import", target=image, job=job.pk, source=shown_source(job)
        )
        sealed = ""
        if request.username or request.password:
            sealed = secrets.seal({"username": request.username, "password": request.password})
        import_run_task.apply_async(kwargs={"job_id": job.pk, "sealed": sealed}, kwargsrepr=HIDDEN)
    return job


def _validate(image: Image, request: ImportRequest, archive: UploadedFile | None) -> None:
    if bool(request.oci) == bool(request.url):
        raise ImportInvalid("Send either 'oci' (a registry reference) or 'url', not both.")
    if request.size is not None and not 0 < request.size <= settings.BAAS_MAX_IMAGE_SIZE:
        raise ImportInvalid(
            f"'size' is a number of bytes up to {settings.BAAS_MAX_IMAGE_SIZE}.", "size"
        )
    if bool(request.username) != bool(request.password):
        raise ImportInvalid("Registry credentials are a username and a password, both.", "password")
    if request.url:
        urls.parse_url(request.url)
        if not request.sha256 or len(request.sha256) != 64 or not _is_hex(request.sha256):
            raise ImportInvalid(
                "A URL import needs 'sha256': the 64 hex digits of the file.", "sha256"
            )
        return
    reference = oci.parse_reference(request.oci)
    oci.parse_platform(request.platform)
    oci.check_label(request.label)
    if request.layout not in Layout.values:
        raise ImportInvalid(
            f"'layout' is 'filesystem' or 'disk', not {request.layout!r}.", "layout"
        )
    if (reference.transport in oci.ARCHIVES) != (archive is not None):
        raise ImportInvalid(
            "Upload the archive in the field 'archive' with an oci-archive: or "
            "docker-archive: reference, and only then.",
            "archive",
        )
    if image.file_standard != FileStandard.RAW:
        raise ImportInvalid(
            "A container image becomes a raw filesystem or disk: import it into a raw image, "
            "not a qcow2 one.",
            "oci",
        )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def work_dir(job: Job) -> Path:
    return Path(settings.BAAS_IMPORT_WORK_DIR) / f"job-{job.pk}"


def _keep_archive(job: Job, archive: UploadedFile) -> None:
    if archive.size is not None and archive.size > settings.BAAS_MAX_IMAGE_SIZE:
        raise ImportInvalid(
            f"The archive is {archive.size} bytes, more than {settings.BAAS_MAX_IMAGE_SIZE}.",
            "archive",
        )
    folder = work_dir(job)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(folder / "archive.tar", "wb") as out:
        for chunk in archive.chunks():
            out.write(chunk)


def import_get_visible(*, actor: Any, job_id: int) -> Job:
    """The job, if ``actor`` may see it; ImportNotFound otherwise (the same for both)."""
    job = Job.objects.select_related("image", "version").filter(pk=job_id).first()
    if job is None or not rules.can_see_import(actor, job):
        raise ImportNotFound()
    return job


def import_cancel(*, actor: Any, job_id: int) -> Job:
    """Cancel the job: at once if queued, within a second if running (its tools stopped, or
    its store given up). ImportConflict if it already ended."""
    import_get_visible(actor=actor, job_id=job_id)
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.is_final:
            raise ImportConflict(f"This import has already ended ({job.state}).")
        job.cancel_requested = True
        fields = ["cancel_requested"]
        if job.state == State.QUEUED:
            job.state, job.finished_at, job.reason = State.CANCELLED, timezone.now(), "Cancelled."
            job.source = shown_source(job)
            fields += ["state", "finished_at", "reason", "source"]
        job.save(update_fields=fields)
        audit_record(actor=actor, action="image.import_cancel", target=job.image, job=job.pk)
    if job.state == State.CANCELLED:
        shutil.rmtree(work_dir(job), ignore_errors=True)
    return job


# --- On the worker -----------------------------------------------------------------------


def import_run(*, job_id: int, sealed: str = "") -> Job | None:
    """Run a queued job to its end (done, failed or cancelled); None if it is not queued."""
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("image").filter(pk=job_id).first()
        if job is None or job.is_final:
            return job
        job.state, job.started_at = State.RUNNING, timezone.now()
        job.save(update_fields=["state", "started_at"])
    progress = Progress(job)
    folder = work_dir(job)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        version = _run_kind(job, progress, folder, sealed)
    except (ToolStopped, ImportStopped) as exc:
        _end(job, progress, State.CANCELLED if str(exc) == "Cancelled." else State.FAILED, str(exc))
    except DomainError as exc:
        _end(job, progress, State.FAILED, str(exc))
    except Exception as exc:
        logger.exception("import %s failed", job.pk)
        _end(
            job,
            progress,
            State.FAILED,
            f"The import failed on the server ({type(exc).__name__}); "
            "nothing was stored. An administrator can read the server log.",
        )
    else:
        job.version = version
        _end(job, progress, State.DONE, "")
    finally:
        progress.remover.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return job


def _run_kind(job: Job, progress: Progress, folder: Path, sealed: str) -> Version:
    if job.kind == Kind.URL:
        return urls.url_import(job=job, progress=progress)
    credentials = secrets.unseal(sealed) if sealed else None
    return registry.oci_import(job=job, progress=progress, folder=folder, credentials=credentials)


def shown_source(job: Job) -> str:
    """The job's source as it may be recorded (the audit event, an ended job's row): a URL
    without its query, fragment or userinfo (a signed URL's token is needed only while the
    worker downloads)."""
    return urls.shown_url(job.source) if job.kind == Kind.URL else job.source


def _end(job: Job, progress: Progress, state: str, reason: str) -> None:
    progress.log(reason or f"Done: version {job.version.number if job.version else '?'}.")
    job.state, job.reason, job.finished_at = state, reason[:1000], timezone.now()
    job.source = shown_source(job)
    Job.objects.filter(pk=job.pk).update(
        state=state,
        reason=job.reason,
        finished_at=job.finished_at,
        version=job.version,
        source=job.source,
    )


@shared_task(
    name="imports.import_run",
    base=TransactionAwareTask,
    soft_time_limit=settings.BAAS_IMPORT_TIMEOUT + 300,
    time_limit=settings.BAAS_IMPORT_TIMEOUT + 600,
)
def import_run_task(job_id: int, sealed: str = "") -> str | None:
    job = import_run(job_id=job_id, sealed=sealed)
    return job.state if job is not None else None


QUEUED_AT_MOST = timedelta(days=1)  # a job no worker took by then lost its message


def imports_sweep(*, now: Any = None) -> int:
    """Fail the jobs whose worker died (running past BAAS_IMPORT_TIMEOUT and a grace) and
    those no worker took within QUEUED_AT_MOST (their message was lost), and remove their
    folders, an uploaded archive with them; returns how many. Folders left by jobs that
    ended, or whose job is gone, are removed too. Beat sends it; a job that ended is left
    alone."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.BAAS_IMPORT_TIMEOUT + 900)
    dead = [
        (State.RUNNING, Q(started_at__lt=now - grace),
         "The worker running this import stopped before it ended; nothing was stored."),
        (State.QUEUED, Q(created_at__lt=now - QUEUED_AT_MOST),
         "No worker started this import within a day (its message was lost); nothing was "
         "stored. Import again."),
    ]  # fmt: skip
    failed = 0
    for state, old, reason in dead:
        for job in Job.objects.filter(old, state=state):
            failed += Job.objects.filter(pk=job.pk, state=state).update(
                state=State.FAILED, reason=reason, finished_at=now, source=shown_source(job)
            )
            shutil.rmtree(work_dir(job), ignore_errors=True)
    _remove_left_folders(now)
    return failed


def _remove_left_folders(now: Any) -> None:
    """Folders of jobs that ended (a worker killed in its last step) or that no longer exist
    (an hour old at least: a job being created has its folder before its row is committed)."""
    root = Path(settings.BAAS_IMPORT_WORK_DIR)
    folders = {int(p.name[4:]): p for p in root.glob("job-*") if p.name[4:].isdigit()}
    if not folders:
        return
    live = set(
        Job.objects.filter(pk__in=folders, state__in=[State.QUEUED, State.RUNNING]).values_list(
            "pk", flat=True
        )
    )
    known = set(Job.objects.filter(pk__in=folders).values_list("pk", flat=True))
    hour_ago = (now - timedelta(hours=1)).timestamp()
    for pk, folder in folders.items():
        try:
            recent = folder.stat().st_mtime > hour_ago
        except FileNotFoundError:
            continue
        if pk not in live and (pk in known or not recent):
            shutil.rmtree(folder, ignore_errors=True)


@shared_task(name="imports.imports_sweep", base=TransactionAwareTask)
def imports_sweep_task() -> int:
    return imports_sweep()
