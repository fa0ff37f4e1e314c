"""Catalogue background jobs: thin adapters that take IDs and call a service.

Every task is sent through ``baas_site.tasks.TransactionAwareTask`` (after commit,
retried on transient errors). A version's processing is one task,
``catalogue.services.pipeline.version_advance_task``, declared beside the pipeline
that sends it; ``versions_prune_task`` likewise lives with the lifecycle rules that
send it. Both are named here so that Celery's autodiscovery finds them.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from baas_site.tasks import TransactionAwareTask
from catalogue.models import Image
from catalogue.services import lifecycle, pipeline
from catalogue.services.lifecycle import versions_prune_task
from catalogue.services.pipeline import version_advance_task
from catalogue.services.uploads import resumable
from catalogue.storage import get_storage

__all__ = [
    "image_recompress_task",
    "purge_stale_uploads_task",
    "resumable_uploads_expire_task",
    "temporal_expire_task",
    "version_advance_task",
    "versions_map_missing_task",
    "versions_processing_sweep_task",
    "versions_prune_task",
]

logger = logging.getLogger(__name__)


# --- A version's processing (catalogue.services.pipeline) ----------------------------------


@shared_task(name="catalogue.versions_processing_sweep", base=TransactionAwareTask)
def versions_processing_sweep_task() -> dict[str, list[int]]:
    """Send again the processing of versions whose job died or was lost (beat, every
    minute): a step owed, a qcow2 rendition not made."""
    return pipeline.versions_processing_sweep()


@shared_task(name="catalogue.versions_map_missing", base=TransactionAwareTask)
def versions_map_missing_task() -> int:
    """Process the versions without a data map (stored before maps existed; beat, hourly)."""
    return len(pipeline.versions_map_missing())


@shared_task(name="catalogue.image_recompress", base=TransactionAwareTask)
def image_recompress_task(image_uuid: str) -> int:
    """Store every version of an image as its compression now asks."""
    image = Image.objects.filter(pk=image_uuid).first()
    return 0 if image is None else len(pipeline.image_process(image))


# --- Stale uploads --------------------------------------------------------------------


@shared_task(name="catalogue.purge_stale_uploads", base=TransactionAwareTask, ignore_result=True)
def purge_stale_uploads_task() -> int:
    """Remove the ``.part`` files of uploads and jobs a crash cut short: no live writer holds
    them, and they are older than BAAS_STALE_UPLOAD_SECONDS. Returns how many were removed.
    """
    removed = get_storage().purge_stale(older_than_seconds=settings.BAAS_STALE_UPLOAD_SECONDS)
    for path in removed:
        logger.warning("Removed the stale upload %s", path)
    return len(removed)


@shared_task(name="catalogue.resumable_uploads_expire", base=TransactionAwareTask)
def resumable_uploads_expire_task() -> dict[str, int]:
    """Remove the bytes of resumable uploads left unfinished for BAAS_UPLOAD_RESUME_HOURS
    (beat, every BAAS_UPLOAD_RESUME_SWEEP_INTERVAL seconds); idempotent."""
    return resumable.resumable_expire()


# --- Lifecycle: temporal images ------------------------------------------------------------


@shared_task(name="catalogue.temporal_expire", base=TransactionAwareTask, max_retries=3)
def temporal_expire_task() -> dict:
    """Delete expired temporal images and their files, but not while a deployment needs them.

    Run by beat every BAAS_TEMPORAL_EXPIRE_INTERVAL seconds; idempotent.
    """
    report = lifecycle.temporal_expire()
    for image_uuid in report.waiting:
        logger.info("Expired temporal image %s waits for a deployment to finish", image_uuid)
    return {"deleted": report.deleted, "waiting": report.waiting, "unpinned": report.unpinned}
