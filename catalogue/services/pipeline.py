"""A version's processing: one idempotent task advances it, one step at a time, to ready.

After an upload a version may still owe work, each step a pass over its whole
image. Its state says what it has::

    received ─▶ digested ─▶ mapped ─▶ stored ─▶ ready
        │           │          │         │
        └───────────┴──────────┴─────────┴──▶ damaged (with why: ``Version.damaged``)

* ``received``: its SHA-256 is not known yet (a large upload leaves it to later);
* ``digested``: it has its SHA-256 but no data map of its bytes;
* ``mapped``: it is not stored as its image asks (another compression, or a zstd
  file not laid out in frames of its map);
* ``stored``: a qcow2 version whose raw rendition is not made yet, or a version
  whose file does not share its unchanged blocks with its base yet (only where
  the filesystem can share blocks: ``sharing``);
* ``ready``: nothing more to do (a failed rendition is recorded on its own and
  leaves the version ready: flashing refuses it, downloads serve its qcow2 file).

The state is **derived, not stored**: it is read from what the steps leave (the
row's ``sha256``, ``stored_compression`` against the image's compression, the map
file and its frames, ``raw_state``, ``damaged``). A stored field would say the
same thing twice and could disagree with it: an image's compression changed by
its owner, a map file lost or a rendition deleted each take a ready version back
to an earlier state without any code telling a state field.

The order reads the image as few times as possible. A version without its SHA-256
that must be stored otherwise is digested by the compression step on its way (one
read); otherwise the digest step records the SHA-256 and the data map together
(one read). A zstd target is mapped before it is stored, so it is written in frames
once, not written and framed again.

One task, :data:`version_advance_task`, does the work: each run looks at the
version, runs its next step under the version's job lock
(``processing.version_job``: the lock, ``job_started_at``, the debt cleared), and
sends itself again if more remains. It is safe to run twice or at once: the lock
serialises runs, each step does nothing when its work is done, and a run that
finds nothing owed ends. The steps (``digests``, ``datamaps``, ``compression``,
``renditions``, ``sharing``) are plain functions that send nothing.
:func:`versions_processing_sweep` (beat, every minute) sends it again for a version
that owes work and has no live job (its worker died, its message was lost); after
``BAAS_JOB_MAX_RESENDS`` times the version is marked damaged, with why.

Imports run one way: ``catalogue.tasks`` → this module → the steps →
``codecs``/models/storage. Whatever must have a version processed (an upload, an
image whose compression changed, a map or rendition found missing) calls
:func:`version_process`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from baas_site.tasks import TRANSIENT, TransactionAwareTask
from catalogue.models import Compression, FileStandard, Image, RawState, Version
from catalogue.services.codecs import ConcurrentChange, version_damaged
from catalogue.services.compression import needs_frames, version_compress
from catalogue.services.datamaps import version_map, version_map_build
from catalogue.services.digests import version_digest_complete
from catalogue.services.processing import job_budget, version_job
from catalogue.services.renditions import is_qcow2, version_raw_make
from catalogue.services.sharing import share_owed, version_share
from catalogue.storage import StorageFull, get_storage

logger = logging.getLogger(__name__)

RECEIVED, DIGESTED, MAPPED, STORED, READY, DAMAGED = (
    "received",
    "digested",
    "mapped",
    "stored",
    "ready",
    "damaged",
)
GONE = "gone"  # (no state: the version was deleted)

# The steps, by the name the sweep's messages use: each takes the version's id.
STEPS: dict[str, Callable[..., Any]] = {
    "digest": version_digest_complete,
    "map": version_map_build,
    "compress": version_compress,
    "raw": version_raw_make,
    "share": version_share,
}
RAW_DONE = (RawState.READY, RawState.FAILED)


# --- What a version owes ---------------------------------------------------------------


@dataclass(frozen=True)
class Owed:
    state: str
    step: str | None  # the next step (a key of STEPS), None when there is none


def version_owed(version: Version) -> Owed:
    """The version's state and its next step (``version.image`` is read)."""
    if version.damaged:
        return Owed(DAMAGED, None)
    mapped = version_map(version) is not None
    restore = version.stored_compression != version.image.compression or needs_frames(version)
    if not version.sha256:
        # Compression digests on its way; to zstd it wants the map first (for its frames).
        frames_ready = version.image.compression != Compression.ZSTD or mapped
        return Owed(RECEIVED, "compress" if restore and frames_ready else "digest")
    if not mapped:
        return Owed(DIGESTED, "map")
    if restore:
        return Owed(MAPPED, "compress")
    if is_qcow2(version) and version.raw_state not in RAW_DONE:
        return Owed(STORED, "raw")
    if share_owed(version):
        return Owed(STORED, "share")
    return Owed(READY, None)


def version_state(version: Version) -> str:
    """``received``, ``digested``, ``mapped``, ``stored``, ``ready`` or ``damaged``."""
    return version_owed(version).state


def _load(version_id: int) -> Version | None:
    return Version.objects.select_related("image").filter(pk=version_id).first()


# --- One step -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advance:
    step: str | None  # the step run (None: none was owed)
    state: str  # the version's state after it, or GONE
    more: bool  # whether another step is owed


def version_advance(*, version_id: int) -> Advance:
    """Run the version's next step, if it owes one; what was done and what is left.

    The caller holds the version's job lock (:data:`version_advance_task` runs this
    inside ``processing.version_job``). Raises what the step raises: VersionCorrupt
    (the version then recorded as damaged, with why), StorageFull or ConcurrentChange
    (worth another try), and ConcurrentChange too when the step left the version
    owing the same step (its file changed under it)."""
    version = _load(version_id)
    if version is None:
        return Advance(None, GONE, False)
    step = version_owed(version).step
    if step is None:
        return Advance(None, version_state(version), False)
    STEPS[step](version_id=version_id)
    version = _load(version_id)
    if version is None:
        return Advance(step, GONE, False)
    after = version_owed(version)
    if after.step == step:
        raise ConcurrentChange(f"Version {version_id} still owes its {step} step after it ran.")
    logger.info("Version %s: %s done, now %s", version_id, step, after.state)
    return Advance(step, after.state, after.step is not None)


# --- The task ----------------------------------------------------------------------------


class VersionJobTask(TransactionAwareTask):
    """A job over a version's whole image: its first argument is the version's id. Each
    send (and each retry) records ``job_sent_at`` (owed) and gets a time budget in
    proportion to what the job reads (``processing.job_budget``); a qcow2 version whose
    raw disk is still to make gets the global limits, as qemu-img has its own
    (``BAAS_RAW_RENDITION_TIMEOUT``)."""

    autoretry_for = (*TRANSIENT, StorageFull, ConcurrentChange)

    def apply_async(self, args: Any = None, kwargs: Any = None, *more: Any, **options: Any) -> Any:
        version_id = args[0] if args else (kwargs or {})["version_id"]
        row = (
            Version.objects.filter(pk=version_id)
            .values("stored_size", "size", "raw_state", "image__file_standard")
            .first()
        )
        if row is None:
            return None
        soft, hard = job_budget(stored_size=row["stored_size"], size=row["size"])
        if row["image__file_standard"] == FileStandard.QCOW2 and row["raw_state"] not in RAW_DONE:
            soft, hard = settings.CELERY_TASK_SOFT_TIME_LIMIT, settings.CELERY_TASK_TIME_LIMIT
        options.setdefault("soft_time_limit", soft)
        options.setdefault("time_limit", hard)
        # The database's clock, as for job_started_at: web and worker hosts' clocks may differ.
        Version.objects.filter(pk=version_id).update(job_sent_at=Now())
        return super().apply_async(args, kwargs, *more, **options)


@shared_task(name="catalogue.version_advance", base=VersionJobTask, bind=True)
def version_advance_task(self: VersionJobTask, version_id: int) -> str:
    """Advance version ``version_id`` by one step; send this task again if more is owed.

    Sent again from inside the job, so the version stays owed (``job_sent_at`` after
    ``job_started_at``) until the run that finds nothing left ends."""
    with version_job(version_id):
        advance = version_advance(version_id=version_id)
        if advance.more:
            self.delay(version_id)
    return f"{advance.step or 'nothing'}: {advance.state}"


def version_process(version_id: int) -> bool:
    """Have the version's owed steps done in the background, once the current transaction
    commits (call where a version is stored, its image's compression changed, or its map
    or rendition was found missing). Returns whether it owes any."""
    version = _load(version_id)
    if version is None or version_owed(version).step is None:
        return False
    version_advance_task.delay(version_id)
    return True


def version_received(version: Version) -> bool:
    """Call where a version's row is created: a qcow2 version's rendition shows as
    ``pending`` at once (on ``version`` too), and its processing is sent after commit."""
    if is_qcow2(version) and not version.raw_state:
        version.raw_state = RawState.PENDING
        Version.objects.filter(pk=version.pk).update(raw_state=RawState.PENDING)
    return version_process(version.pk)


def image_process(image: Image) -> list[int]:
    """Call after an image's compression changed: store each version as it now asks.
    Returns the ids of the versions sent."""
    stored_otherwise = image.versions.exclude(stored_compression=image.compression)
    candidates = stored_otherwise.filter(damaged="").order_by("pk").values_list("pk", flat=True)
    return [version_id for version_id in candidates if version_process(version_id)]


# --- The sweep ------------------------------------------------------------------------------


def versions_processing_sweep(*, limit: int = 100) -> dict[str, list[int]]:
    """Send again the task of versions that owe work and have no live job; mark damaged
    those sent again BAAS_JOB_MAX_RESENDS times already. Returns the ids per outcome.

    Owing is found from the rows (sent and not done, no SHA-256, stored otherwise, a
    qcow2 rendition not made); a map lost is found by :func:`versions_map_missing`."""
    report: dict[str, list[int]] = {"resent": [], "damaged": [], "done": []}
    owing = (
        Q(job_sent_at__isnull=False)
        | Q(sha256="")
        | ~Q(stored_compression=F("image__compression"))
        | (Q(image__file_standard=FileStandard.QCOW2) & ~Q(raw_state__in=RAW_DONE))
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
    step = version_owed(version).step
    if step is None:
        Version.objects.filter(pk=version_id).update(job_sent_at=None, job_resends=0)
        return "done"
    if version.job_resends >= settings.BAAS_JOB_MAX_RESENDS:
        _give_up(version, step)
        return "damaged"
    if version.job_sent_at is not None:  # (never sent: a version from before this sweep)
        Version.objects.filter(pk=version_id).update(job_resends=F("job_resends") + 1)
    logger.warning("Sending the %s step of version %s again: its last job died", step, version_id)
    version_advance_task.delay(version_id)
    return "resent"


def _stuck(version: Version) -> bool:
    """Whether the version's owed job is dead (no live job holds its lock: checked before):
    it started after it was last sent, or it was sent long ago and never started."""
    sent, started = version.job_sent_at, version.job_started_at
    if sent is None or (started is not None and started >= sent):
        return True
    return timezone.now() - sent > timedelta(seconds=settings.BAAS_JOB_LOST_SECONDS)


def _give_up(version: Version, step: str) -> None:
    attempts = version.job_resends + 1
    version_damaged(
        version,
        f"Version {version.number} could not be processed: its {step} job stopped {attempts} "
        "times without finishing (its worker died, ran out of time or failed; the workers' "
        "log says why). Upload it again.",
    )
    Version.objects.filter(pk=version.pk).update(job_sent_at=None)


def versions_map_missing(*, limit: int = 100) -> list[int]:
    """Send the processing of up to ``limit`` versions that have no map file (stored before
    maps existed, or whose map was lost); their ids. A scan of every version's map file:
    run hourly, where the sweep reads only rows."""
    storage = get_storage()
    missing = []
    rows = Version.objects.filter(damaged="").order_by("pk").values_list("pk", "image_id", "number")
    for version_id, image_id, number in rows:
        if not storage.has_map(image_id, number) and version_process(version_id):
            missing.append(version_id)
            if len(missing) >= limit:
                break
    return missing
