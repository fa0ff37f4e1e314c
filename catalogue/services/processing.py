"""A version's background processing: sent with a time budget, run under a lock, never lost.

After an upload a version may owe jobs: its SHA-256 (``digests``), its
compression or its layout in frames (``compression``), its data map
(``datamaps``). Each of them reads a whole image, so:

* :func:`version_job_send` queues one on the long queue (``settings``'
  routes) once the transaction commits, with a soft time limit proportional
  to what it reads (:func:`job_budget`), and records ``job_sent_at``: a job is
  owed;
* the task runs inside :func:`version_job`, which holds the version's job
  lock (``storage.job_lock``: dropped by the kernel if the worker dies),
  records ``job_started_at``, and clears the debt when it ends well and
  nothing was sent since it started;
* :func:`versions_processing_sweep` (beat, every minute) sends again the job
  of every version that owes one and has no live job: its worker died (it
  started, holds no lock, owes still) or its message was lost (queued
  ``BAAS_JOB_LOST_SECONDS`` ago, never started). After
  ``BAAS_JOB_MAX_RESENDS`` times the version is marked damaged, with why.

:func:`storage_audit` compares the files under the image root with the rows.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from catalogue.models import Version
from catalogue.storage import PART_SUFFIX, SUFFIXES, get_storage

logger = logging.getLogger(__name__)

# The jobs a version may owe, and their tasks in catalogue.tasks.
JOBS = {
    "compress": "version_compress_task",
    "digest": "version_digest_task",
    "map": "version_map_task",
}


# --- Sending ----------------------------------------------------------------------------


def job_budget(*, stored_size: int, size: int) -> tuple[int, int]:
    """The (soft, hard) time limits in seconds of a job that reads a version of ``size`` raw
    bytes stored in ``stored_size`` bytes: a base plus one second per BAAS_JOB_MIN_RATE
    bytes stored and per BAAS_JOB_MIN_RAW_RATE raw bytes, at most the global soft limit."""
    soft = (
        settings.BAAS_JOB_TIME_BASE
        + stored_size // settings.BAAS_JOB_MIN_RATE
        + size // settings.BAAS_JOB_MIN_RAW_RATE
    )
    soft = min(soft, settings.CELERY_TASK_SOFT_TIME_LIMIT)
    return soft, soft + settings.BAAS_JOB_TIME_GRACE


def version_job_send(*, version_id: int, job: str) -> None:
    """Queue ``job`` (a key of JOBS) for the version once the current transaction commits."""
    transaction.on_commit(lambda: _send_now(version_id, job))


def _send_now(version_id: int, job: str) -> None:
    from catalogue import tasks

    row = Version.objects.filter(pk=version_id).values("stored_size", "size").first()
    if row is None:
        return
    soft, hard = job_budget(stored_size=row["stored_size"], size=row["size"])
    Version.objects.filter(pk=version_id).update(job_sent_at=Now())
    task = getattr(tasks, JOBS[job])
    task.apply_async(args=[version_id], soft_time_limit=soft, time_limit=hard)


def version_job_resent(version_id: int) -> None:
    """A job of the version was queued again by Celery itself (a retry): it is owed anew."""
    Version.objects.filter(pk=version_id).update(job_sent_at=Now())


# --- Running -----------------------------------------------------------------------------


@contextlib.contextmanager
def version_job(version_id: int) -> Iterator[None]:
    """Run a processing job of version ``version_id`` inside this: under its job lock, with
    its start recorded; ending well, the version owes nothing more unless the job (or
    someone) sent another meanwhile. A version already gone runs the job as is."""
    row = Version.objects.filter(pk=version_id).values("image_id", "number").first()
    if row is None:
        yield
        return
    with get_storage().job_lock(row["image_id"], row["number"]):
        # The database's clock, as for job_sent_at: web and worker hosts' clocks may differ.
        Version.objects.filter(pk=version_id).update(job_started_at=Now())
        yield
        Version.objects.filter(pk=version_id, job_sent_at__lte=F("job_started_at")).update(
            job_sent_at=None, job_resends=0
        )


# --- The sweep ------------------------------------------------------------------------------


def version_next_job(version: Version) -> str | None:
    """The job the version still needs (a key of JOBS), or None when it is processed."""
    from catalogue.services.compression import needs_frames

    if version.stored_compression != version.image.compression or needs_frames(version):
        return "compress"  # (which records a missing SHA-256 on its way)
    if not version.sha256:
        return "digest"
    if not get_storage().map_path(version.image_id, version.number).exists():
        return "map"
    return None


def versions_processing_sweep(*, limit: int = 100) -> dict[str, list[int]]:
    """Send again the job of versions that owe one and have none alive; mark damaged those
    sent again BAAS_JOB_MAX_RESENDS times already. Returns the version ids per outcome."""
    report: dict[str, list[int]] = {"resent": [], "damaged": [], "done": []}
    owing = (
        Q(job_sent_at__isnull=False) | Q(sha256="") | ~Q(stored_compression=F("image__compression"))
    )
    candidates = Version.objects.filter(owing, damaged="").order_by("pk")
    storage = get_storage()
    for version_id, image_id, number in candidates.values_list("pk", "image_id", "number")[:limit]:
        if storage.job_running(image_id, number):
            continue
        outcome = _sweep_one(version_id)
        if outcome is not None:
            report[outcome].append(version_id)
    return report


@transaction.atomic
def _sweep_one(version_id: int) -> str | None:
    version = (
        Version.objects.select_for_update(of=("self",))
        .select_related("image")
        .filter(pk=version_id, damaged="")
        .first()
    )
    if version is None or not _stuck(version):
        return None
    job = version_next_job(version)
    if job is None:
        Version.objects.filter(pk=version_id).update(job_sent_at=None, job_resends=0)
        return "done"
    if version.job_resends >= settings.BAAS_JOB_MAX_RESENDS:
        _give_up(version, job)
        return "damaged"
    if version.job_sent_at is not None:  # (never sent: a version from before this sweep)
        Version.objects.filter(pk=version_id).update(job_resends=F("job_resends") + 1)
    logger.warning("Sending the %s job of version %s again: its last one died", job, version_id)
    version_job_send(version_id=version_id, job=job)
    return "resent"


def _stuck(version: Version) -> bool:
    """Whether the version's owed job is dead (no live job holds its lock: checked before):
    it started after it was last sent, or it was sent long ago and never started."""
    sent, started = version.job_sent_at, version.job_started_at
    if sent is None or (started is not None and started >= sent):
        return True
    return timezone.now() - sent > timedelta(seconds=settings.BAAS_JOB_LOST_SECONDS)


def _give_up(version: Version, job: str) -> None:
    from catalogue.services.compression import version_damaged

    attempts = version.job_resends + 1
    version_damaged(
        version,
        f"Version {version.number} could not be processed: its {job} job stopped {attempts} "
        "times without finishing (its worker died, ran out of time or failed; the workers' "
        "log says why). Upload it again.",
    )
    Version.objects.filter(pk=version.pk).update(job_sent_at=None)


# --- Audit ------------------------------------------------------------------------------------

# A file of version n: ``<n>.img[.gz|.zst]``, or beside it (``<n>.map.json``, ``<n>.raw``…).
_NUMBERED = re.compile(r"^(\d+)(\..+)$")
_VERSION_SUFFIXES = frozenset(SUFFIXES.values())


@dataclass(frozen=True)
class StorageAudit:
    """Where the image root and the rows disagree (all empty: they match).

    ``stray_files``: files of no row (``<uuid>/<name>``), ``.part`` files included;
    ``parts``: the ``.part`` files alone (an operation in progress, or debris);
    ``missing_files``: ``(image uuid, number, expected file name)`` of rows without
    their file."""

    stray_files: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    missing_files: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.stray_files or self.missing_files)


def storage_audit() -> StorageAudit:
    """Compare the files under BAAS_DISK_ROOT with the version rows (reads only).

    A version's file is ``<n>`` with its stored compression's suffix; the other files
    of a version that exists (``<n>.map.json``, a raw rendition ``<n>.raw``…) are
    not stray; any ``<n>.…`` of a number without a row is. Call it when no upload
    or job is running, to check "no leftover ``.part``, no row without its file"."""
    rows = {
        (str(image_id), number): compression
        for image_id, number, compression in Version.objects.values_list(
            "image_id", "number", "stored_compression"
        )
    }
    audit = StorageAudit()
    seen = set()
    for directory, name in get_storage().stored_names():
        numbered = _NUMBERED.match(name)
        key = (directory, int(numbered[1])) if numbered else None
        if name.endswith(PART_SUFFIX):
            audit.parts.append(f"{directory}/{name}")
            audit.stray_files.append(f"{directory}/{name}")
        elif key is None:
            audit.stray_files.append(f"{directory}/{name}")  # no version's file at all
        elif key not in rows:
            audit.stray_files.append(f"{directory}/{name}")  # of no version: debris
        elif numbered and numbered[2] in _VERSION_SUFFIXES:
            if SUFFIXES[rows[key]] == numbered[2]:
                seen.add(key)
            else:  # in another compression than the row's: a compression's leftover
                audit.stray_files.append(f"{directory}/{name}")
    for (image_id, number), compression in sorted(rows.items()):
        if (image_id, number) not in seen:
            audit.missing_files.append((image_id, number, f"{number}{SUFFIXES[compression]}"))
    return audit
