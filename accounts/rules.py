"""Who may do what: plain predicates, and DRF permission classes built on them.

Role semantics from the original BAAS:

* users use system images and modify only their own images;
* moderators also modify the system images assigned to them;
* administrators (and Django superusers) modify everything.

Every view, admin and service asks these predicates; no rule lives anywhere else.
Image predicates take any object with ``owner_id``, ``type`` and a
``maintainers`` manager, so the catalogue can use them without a cycle.
"""

from __future__ import annotations

from typing import Any, Protocol

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

SYSTEM = "system"


class _Image(Protocol):
    owner_id: Any
    type: str
    maintainers: Any


def is_authenticated(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def is_administrator(user: Any) -> bool:
    return is_authenticated(user) and user.is_administrator


def is_moderator(user: Any) -> bool:
    """Moderators and above."""
    return is_authenticated(user) and (user.is_moderator or user.is_administrator)


def can_use_admin(user: Any) -> bool:
    return is_administrator(user)


# --- Users and tokens ---------------------------------------------------------


def can_manage_user(actor: Any, target: Any) -> bool:
    """Read, change, delete a user, and manage their tokens: themselves or an administrator."""
    return is_authenticated(actor) and (actor.pk == target.pk or actor.is_administrator)


def can_create_user(actor: Any) -> bool:
    return is_administrator(actor)


def can_change_role(actor: Any) -> bool:
    return is_administrator(actor)


# --- Images -------------------------------------------------------------------


def is_maintainer(user: Any, image: _Image) -> bool:
    if not is_moderator(user):
        return False
    cache = getattr(image, "_prefetched_objects_cache", {})
    if "maintainers" in cache:
        return any(m.pk == user.pk for m in cache["maintainers"])
    return image.maintainers.filter(pk=user.pk).exists()


def can_create_image(user: Any, image_type: str) -> bool:
    """Everyone signed in creates images; system images only moderators and administrators."""
    if image_type == SYSTEM:
        return is_moderator(user)
    return is_authenticated(user)


def can_read_image(user: Any, image: _Image) -> bool:
    """System images are shared with every signed-in user; others are private."""
    if not is_authenticated(user):
        return False
    return (
        image.type == SYSTEM
        or image.owner_id == user.pk
        or user.is_administrator
        or is_maintainer(user, image)
    )


def can_write_image(user: Any, image: _Image) -> bool:
    """Change metadata and upload versions.

    A system image changes only through administrators, its assigned
    moderators, or an owner who is a moderator.
    """
    if not is_authenticated(user):
        return False
    if user.is_administrator:
        return True
    if image.type == SYSTEM:
        return is_maintainer(user, image) or (image.owner_id == user.pk and is_moderator(user))
    return image.owner_id == user.pk


def can_delete_image(user: Any, image: _Image) -> bool:
    """Delete an image and its files: the owner (a moderator, for system images) or an admin."""
    if not is_authenticated(user):
        return False
    if user.is_administrator:
        return True
    if image.owner_id != user.pk:
        return False
    return image.type != SYSTEM or is_moderator(user)


def can_change_image_type(user: Any, old_type: str, new_type: str) -> bool:
    """Turning an image into, or out of, a system image is for moderators and administrators."""
    if SYSTEM in (old_type, new_type) and old_type != new_type:
        return is_moderator(user)
    return is_authenticated(user)


def can_assign_maintainers(user: Any) -> bool:
    return is_administrator(user)


# --- DRF permission classes ----------------------------------------------------


class IsAdministrator(BasePermission):
    message = "Only administrators may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_administrator(request.user)


class IsModerator(BasePermission):
    message = "Only moderators and administrators may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_moderator(request.user)
