"""Catalogue background jobs: thin adapters that take IDs and call a service."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)

# --- Stale uploads --------------------------------------------------------------------


@shared_task(name="catalogue.purge_stale_uploads", acks_late=True, ignore_result=True)
def purge_stale_uploads_task() -> int:
    """Remove ``.part`` files older than BAAS_STALE_UPLOAD_SECONDS: uploads a crash cut short.

    Live uploads keep writing (and so touching) their file; only abandoned ones age.
    Returns how many files were removed.
    """
    from django.conf import settings

    from catalogue.storage import get_storage

    removed = get_storage().purge_stale(older_than_seconds=settings.BAAS_STALE_UPLOAD_SECONDS)
    for path in removed:
        logger.warning("Removed the stale upload %s", path)
    return len(removed)
