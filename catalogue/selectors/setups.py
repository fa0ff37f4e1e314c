"""Reads for image setups, with the permission checks they need.

``setups_pinning`` is the hook for image and version deletion: a version
pinned by a setup, or an image with such a version, cannot be deleted.
"""

from __future__ import annotations

import uuid

from django.db.models import Prefetch, QuerySet

from accounts.models import User
from accounts.rules import Actor
from accounts.selectors import username_check
from catalogue import rules
from catalogue.exceptions import SetupNotFound
from catalogue.models import Image, ImageFrozen, ImageSetup, Version


def _frozen_with_images() -> QuerySet[ImageFrozen]:
    return ImageFrozen.objects.select_related("image", "version").order_by("id")


def setup_owner_get(*, actor: Actor, username: str, creating: bool = False) -> User:
    """The user named ``username``, if ``actor`` may create (or manage) their setups.

    400 for a malformed name, 404 for an unknown user or one whose setups are
    not the actor's business.
    """
    owner = User.objects.filter(username=username_check(username)).first()
    allowed = rules.can_create_setup_for if creating else rules.can_manage_setups_of
    if owner is None or not allowed(actor, owner):
        raise SetupNotFound("No such user, or their setups are not yours to see.")
    return owner


def setup_list(*, owner: User) -> QuerySet[ImageSetup]:
    """``owner``'s setups with their pinned images, in three queries whatever their number."""
    return (
        ImageSetup.objects.filter(owner=owner)
        .select_related("owner")
        .prefetch_related(Prefetch("frozen_images", queryset=_frozen_with_images()))
        .order_by("name", "created_at")
    )


def setup_get(*, owner: User, setup_uuid: uuid.UUID | str) -> ImageSetup:
    """One of ``owner``'s setups (the caller has checked the actor with ``setup_owner_get``)."""
    setup = setup_list(owner=owner).filter(uuid=setup_uuid).first()
    if setup is None:
        raise SetupNotFound()
    return setup


def setup_list_usable(*, user: Actor) -> QuerySet[ImageSetup]:
    """``rules.can_use_setup`` as a query: one's own setups, every one for administrators."""
    setups = ImageSetup.objects.select_related("owner").order_by("owner__username", "name")
    if rules.is_administrator(user):
        return setups
    if not rules.is_authenticated(user) or not isinstance(user, User):
        return setups.none()
    return setups.filter(owner=user)


def setup_get_usable(*, user: Actor, setup_uuid: uuid.UUID | str) -> ImageSetup | None:
    """A setup ``user`` may flash (``rules.can_use_setup``), or None."""
    setup = (
        ImageSetup.objects.select_related("owner")
        .prefetch_related(Prefetch("frozen_images", queryset=_frozen_with_images()))
        .filter(uuid=setup_uuid)
        .first()
    )
    if setup is None or not rules.can_use_setup(user, setup):
        return None
    return setup


def setups_pinning(
    *, image: Image | None = None, version: Version | None = None
) -> QuerySet[ImageSetup]:
    """The setups that pin ``version``, or any version of ``image``.

    For image and version deletion: a non-empty answer means 409, naming these
    setups. Pass exactly one of ``image`` and ``version``.
    """
    if (image is None) == (version is None):
        raise TypeError("Pass exactly one of image and version.")
    frozen = (
        ImageFrozen.objects.filter(image=image)
        if image
        else ImageFrozen.objects.filter(version=version)
    )
    return (
        ImageSetup.objects.filter(uuid__in=frozen.values("setup_id"))
        .select_related("owner")
        .order_by("name", "created_at")
    )


def describe_setups(setups: QuerySet[ImageSetup]) -> str:
    """'"a" (alice), "b" (bob)': setups named for a person reading a 409."""
    return ", ".join(f'"{s.name}" ({s.owner.username}, {s.uuid})' for s in setups)


def frozen_get(*, setup: ImageSetup, image_uuid: uuid.UUID) -> ImageFrozen:
    """The pinned image of ``setup`` with that image UUID; 404 if it is not in the setup."""
    frozen = _frozen_with_images().filter(setup=setup, image_id=image_uuid).first()
    if frozen is None:
        raise SetupNotFound("This image is not in the setup.")
    return frozen
