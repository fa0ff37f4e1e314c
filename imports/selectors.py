"""Reads that need care: an image for someone about to import, the imports of an image."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet

from catalogue.interface import can_read_image
from catalogue.models import Image
from imports.exceptions import ImportNotFound
from imports.models import ImportJob
from imports.rules import can_import_image


def image_for_import(*, actor: Any, image_id: uuid.UUID | str) -> Image:
    """The image, if ``actor`` may read it (else ImportNotFound: other people's images are 404);
    whether they may import into it is ``import_create``'s check."""
    image = Image.objects.filter(pk=image_id).first()
    if image is None or not can_read_image(actor, image):
        raise ImportNotFound("No such image.")
    return image


def imports_of_image(*, actor: Any, image: Image) -> QuerySet[ImportJob]:
    if not can_import_image(actor, image):
        return ImportJob.objects.none()
    return ImportJob.objects.filter(image=image).select_related("version")
