"""Catalogue background jobs: thin adapters that take IDs and call a service."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from catalogue.services import compression, datamaps, digests, processing
from catalogue.storage import StorageFull

logger = logging.getLogger(__name__)


class VersionJobTask(Task):
    """A job of a version's processing (``catalogue.services.processing``): its first
    argument is the version's id; a retry Celery sends counts as the job sent anew."""

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        version_id = args[0] if args else kwargs.get("version_id")
        if version_id is not None:
            processing.version_job_resent(version_id)


# --- Compression ----------------------------------------------------------------

# Worth another try later: the database or disk may recover, a race settles.
COMPRESSION_TRANSIENT = (
    OperationalError,
    InterfaceError,
    StorageFull,
    compression.ConcurrentChange,
)


@shared_task(
    name="catalogue.version_compress",
    base=VersionJobTask,
    acks_late=True,
    autoretry_for=COMPRESSION_TRANSIENT,
    retry_backoff=15,
    retry_backoff_max=900,
    retry_jitter=True,
    max_retries=8,
)
def version_compress_task(version_id: int) -> str:
    """Store one version with its image's compression; running it twice does nothing more.

    A corrupt version (bytes not matching its SHA-256) fails without retries
    and without touching the stored file.
    """
    with processing.version_job(version_id):
        outcome = compression.version_compress(version_id=version_id)
    if outcome is None:
        return "gone"
    return f"{outcome.stored_compression}{' (changed)' if outcome.changed else ''}"


@shared_task(
    name="catalogue.image_recompress",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=15,
    max_retries=8,
)
def image_recompress_task(image_uuid: str) -> int:
    """Queue a compression job for each version stored otherwise than its image says."""
    return len(compression.image_recompress(image_uuid=image_uuid))


@shared_task(
    name="catalogue.version_map",
    base=VersionJobTask,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError, StorageFull),
    retry_backoff=15,
    max_retries=8,
)
def version_map_task(version_id: int) -> str:
    """Build a version's data map from its stored file (nothing if it has one)."""
    with processing.version_job(version_id):
        datamap = datamaps.version_map_build(version_id=version_id)
    if datamap is None:
        return "gone"
    return f"{len(datamap.ranges)} ranges, {datamap.data_bytes} data bytes"


@shared_task(name="catalogue.versions_map_missing", acks_late=True)
def versions_map_missing_task() -> int:
    """Queue map builds for versions without a data map (stored before maps existed)."""
    return len(datamaps.versions_map_missing())


# --- Whole-image SHA-256 left to later by large uploads --------------------------------


@shared_task(
    name="catalogue.version_digest",
    base=VersionJobTask,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=15,
    max_retries=8,
)
def version_digest_task(version_id: int) -> str:
    """Record the SHA-256 of a version whose upload left it to later, then compress it.

    A stored file that no longer matches its upload's data map fails without
    retries and keeps no digest.
    """
    with processing.version_job(version_id):
        digest = digests.version_digest_complete(version_id=version_id)
    return digest or "gone"


@shared_task(name="catalogue.versions_digest_missing", acks_late=True)
def versions_digest_missing_task() -> int:
    """Queue the digest job of versions still without a SHA-256 (their job was lost)."""
    return len(digests.versions_digest_missing())


@shared_task(name="catalogue.versions_processing_sweep", acks_late=True)
def versions_processing_sweep_task() -> dict[str, list[int]]:
    """Send again the processing jobs that died with their worker (beat, every minute)."""
    return processing.versions_processing_sweep()


# --- Stale uploads --------------------------------------------------------------------


@shared_task(name="catalogue.purge_stale_uploads", acks_late=True, ignore_result=True)
def purge_stale_uploads_task() -> int:
    """Remove the ``.part`` files of uploads and jobs a crash cut short: no live writer holds
    them, and they are older than BAAS_STALE_UPLOAD_SECONDS. Returns how many were removed.
    """
    from django.conf import settings

    from catalogue.storage import get_storage

    removed = get_storage().purge_stale(older_than_seconds=settings.BAAS_STALE_UPLOAD_SECONDS)
    for path in removed:
        logger.warning("Removed the stale upload %s", path)
    return len(removed)


# --- Lifecycle: temporal images and version retention -------------------------------------


@shared_task(
    name="catalogue.temporal_expire",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=15,
    max_retries=3,
)
def temporal_expire_task() -> dict:
    """Delete expired temporal images and their files, but not while a deployment needs them.

    Run by beat every BAAS_TEMPORAL_EXPIRE_INTERVAL seconds; idempotent.
    """
    from catalogue.services import lifecycle

    report = lifecycle.temporal_expire()
    for image_uuid in report.waiting:
        logger.info("Expired temporal image %s waits for a deployment to finish", image_uuid)
    return {"deleted": report.deleted, "waiting": report.waiting, "unpinned": report.unpinned}


@shared_task(
    name="catalogue.versions_prune",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=15,
    max_retries=3,
)
def versions_prune_task(image_uuid: str | None = None) -> dict:
    """Delete versions beyond an image's ``keep_versions`` (every image when none is given).

    Fired after each upload commits, and by beat every BAAS_VERSIONS_PRUNE_INTERVAL
    seconds for every image; idempotent.
    """
    from catalogue.services import lifecycle

    if image_uuid is None:
        return lifecycle.versions_prune_all()
    numbers = lifecycle.versions_prune(image_uuid=image_uuid)
    return {image_uuid: numbers} if numbers else {}


# --- Raw renditions of qcow2 versions (catalogue.services.renditions) ----------------------


@shared_task(
    name="catalogue.version_raw",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError, StorageFull),
    retry_backoff=15,
    retry_backoff_max=900,
    max_retries=8,
)
def version_raw_task(version_id: int) -> str:
    """Make the raw disk a qcow2 version describes (qemu-img convert, bounded in time);
    running it again does nothing more. A file qemu-img refuses fails the rendition, with
    its reason, without retries."""
    from catalogue.services import renditions

    version = renditions.version_raw_make(version_id=version_id)
    return "gone" if version is None else version.raw_state or "raw image"


@shared_task(name="catalogue.versions_raw_missing", acks_late=True)
def versions_raw_missing_task() -> int:
    """Queue the rendition job of qcow2 versions still without one (their job was lost)."""
    from catalogue.services import renditions

    return len(renditions.versions_raw_missing())
