"""Reads for images and versions, with the permission checks and prefetching they need.

Who may read what is ``catalogue.rules.can_read_image``; the querysets here
express the same rule in SQL (own, system, maintained; everything for
administrators), so lists never load what they would then hide.
"""

from __future__ import annotations

import uuid

from django.db.models import Prefetch, Q, QuerySet

from accounts.models import User
from accounts.rules import Actor
from catalogue import rules
from catalogue.exceptions import ImageNotFound, InvalidInput, NotYours
from catalogue.models import Image, ImageType, Version


def image_uuid_check(value: str) -> uuid.UUID:
    """400 for a path segment that is not a UUID."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput({"uuid": f"'{value}' is not an image UUID."}) from None


def image_queryset() -> QuerySet[Image]:
    """Images with everything their API representation shows, in a constant number of queries."""
    return Image.objects.select_related("owner").prefetch_related(
        Prefetch(
            "versions",
            queryset=Version.objects.select_related("uploaded_by").order_by("number"),
        ),
        Prefetch("maintainers", queryset=User.objects.only("pk", "username", "role")),
        Prefetch("associated_images", queryset=Image.objects.only("uuid")),
    )


def _readable_q(actor: Actor) -> Q:
    """``rules.can_read_image`` as a filter. Callers ensure ``actor`` is signed in."""
    if rules.is_administrator(actor):
        return Q()
    readable = Q(type=ImageType.SYSTEM) | Q(owner=actor)
    if rules.is_moderator(actor) and isinstance(actor, User):
        maintained = Image.maintainers.through.objects.filter(user=actor).values("image_id")
        readable |= Q(pk__in=maintained)
    return readable


def image_list_readable(*, actor: Actor) -> QuerySet[Image]:
    """Every image ``actor`` may read (``catalogue.filters`` narrows it for a list)."""
    if not rules.is_authenticated(actor):
        return Image.objects.none()
    return image_queryset().filter(_readable_q(actor))


def image_list_owned(*, owner: User) -> QuerySet[Image]:
    """``owner``'s images; the caller has checked the actor may see them."""
    return image_queryset().filter(owner=owner)


def image_get_readable(*, actor: Actor, image_id: str, full: bool = True) -> Image:
    """The image ``image_id`` if ``actor`` may read it: 400 for a malformed UUID, else 404.

    404 also for other users' private images, so nobody learns they exist.
    ``full`` prefetches what the image's representation shows.
    """
    images = image_queryset() if full else Image.objects.all()
    image = images.filter(pk=image_uuid_check(image_id)).first()
    if image is None or not rules.can_read_image(actor, image):
        raise ImageNotFound()
    return image


def image_get_writable(
    *, actor: Actor, image_id: str, full: bool = True, doing: str = "change"
) -> Image:
    """The image ``image_id`` if ``actor`` may change it and upload to it.

    As ``image_get_readable`` for an image the actor may not read (400, 404);
    ``NotYours`` (403) for one they may read but not change (``doing`` names
    the change in its message). An upload calls this before reading any of the
    request's body.
    """
    image = image_get_readable(actor=actor, image_id=image_id, full=full)
    if not rules.can_write_image(actor, image):
        raise NotYours(f"You may read this image but not {doing} it.")
    return image


def image_get_deletable(*, actor: Actor, image_id: str, full: bool = True) -> Image:
    """The image ``image_id`` if ``actor`` may delete it; as ``image_get_writable`` otherwise."""
    image = image_get_readable(actor=actor, image_id=image_id, full=full)
    if not rules.can_delete_image(actor, image):
        raise NotYours("Only the image's owner or an administrator may delete it.")
    return image


def version_list(*, image: Image) -> QuerySet[Version]:
    return Version.objects.filter(image=image).select_related("uploaded_by").order_by("number")
