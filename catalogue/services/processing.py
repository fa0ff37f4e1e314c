"""What every job over a version's image runs under: a time budget, a lock, a debt.

A step of a version's processing (``catalogue.services.pipeline``) reads a whole
image, so:

* it is sent with a soft time limit proportional to what it reads
  (:func:`job_budget`), and its send records ``job_sent_at``: a job is owed;
* it runs inside :func:`version_job`, which holds the version's job lock
  (``storage.job_lock``: dropped by the kernel if the worker dies), records
  ``job_started_at``, and clears the debt when it ends well and nothing was sent
  since it started;
* the pipeline's sweep sends again the job of a version that owes one and has no
  live job (its worker died, or its message was lost).

:func:`storage_audit` compares the files under the image root with the rows.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import F
from django.db.models.functions import Now

from catalogue.models import Version
from catalogue.storage import PART_SUFFIX, SUFFIXES, get_storage

logger = logging.getLogger(__name__)


# --- Budget and lock -------------------------------------------------------------------


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
