"""Who may do what with images and setups: plain predicates on ``accounts.rules``' roles.

Only the catalogue's services and selectors enforce them (``image_get_readable``,
``image_get_writable``, ``setup_get_usable``, …): views, the API, the admin and
forms ask them only to decide what to show. Image predicates take any object
with ``pk``, ``owner_id``, ``type`` and a ``maintainers`` manager.
"""

from __future__ import annotations

from typing import Any, Protocol

from accounts.rules import Actor
from accounts.rules import is_administrator as is_administrator  # services ask catalogue.rules
from accounts.rules import is_agent as is_agent
from accounts.rules import is_authenticated as is_authenticated
from accounts.rules import is_moderator as is_moderator

SYSTEM = "system"


class _Image(Protocol):
    pk: Any
    owner_id: Any
    type: str
    maintainers: Any


def can_admin_image(user: Actor | None, image: _Image | None = None) -> bool:
    """See an image in the admin: every image for administrators, for moderators only the
    system images assigned to them (``image=None`` asks about the list as a whole)."""
    if is_administrator(user):
        return True
    if image is None:
        return is_moderator(user)
    return image.type == SYSTEM and is_maintainer(user, image)


def is_maintainer(user: Actor | None, image: _Image) -> bool:
    if not is_moderator(user):
        return False
    cache = getattr(image, "_prefetched_objects_cache", {})
    if "maintainers" in cache:
        return any(m.pk == user.pk for m in cache["maintainers"])
    return bool(image.maintainers.filter(pk=user.pk).exists())


def can_create_image(user: Actor | None, image_type: str) -> bool:
    """Everyone signed in creates images; system images only moderators and administrators."""
    if image_type == SYSTEM:
        return is_moderator(user)
    return is_authenticated(user)


def can_read_image(user: Actor | None, image: _Image) -> bool:
    """System images are shared with every signed-in user; others are private.

    An agent reads only the images of its deployment (to write, or to bring back).
    """
    if is_agent(user):
        return image.pk in user.images("write") or image.pk in user.images("sync")
    if not is_authenticated(user):
        return False
    return (
        image.type == SYSTEM
        or image.owner_id == user.pk
        or is_administrator(user)
        or is_maintainer(user, image)
    )


def can_write_image(user: Actor | None, image: _Image) -> bool:
    """Change metadata and upload versions.

    A system image changes only through administrators, its assigned
    moderators, or an owner who is a moderator. An agent uploads only its
    deployment's sync images.
    """
    if is_agent(user):
        return image.pk in user.images("sync")
    if not is_authenticated(user):
        return False
    if is_administrator(user):
        return True
    if image.type == SYSTEM:
        return is_maintainer(user, image) or (image.owner_id == user.pk and is_moderator(user))
    return bool(image.owner_id == user.pk)


def can_delete_image(user: Actor | None, image: _Image) -> bool:
    """Delete an image and its files: the owner (a moderator, for system images) or an admin."""
    if not is_authenticated(user):
        return False
    if is_administrator(user):
        return True
    if image.owner_id != user.pk:
        return False
    return image.type != SYSTEM or is_moderator(user)


def can_change_image_type(user: Actor | None, old_type: str, new_type: str) -> bool:
    """Turning an image into, or out of, a system image is for moderators and administrators."""
    if SYSTEM in (old_type, new_type) and old_type != new_type:
        return is_moderator(user)
    return is_authenticated(user)


def can_assign_maintainers(user: Actor | None) -> bool:
    return is_administrator(user)


# --- Image setups ---------------------------------------------------------------
# From the original API table: a user's setups are created by the user or an
# administrator, and read, changed and deleted by the user, moderators (who look
# after the shared machines) and administrators. Which images a setup may hold is
# decided by its *owner's* rights (``can_read_image``/``can_write_image``), never
# by whoever edits it, so a moderator or administrator cannot smuggle an image
# into a setup whose owner could not read it.


def can_create_setup_for(actor: Actor | None, owner: Any) -> bool:
    """Create a setup owned by ``owner``: the owner themselves or an administrator."""
    return is_authenticated(actor) and (actor.pk == owner.pk or is_administrator(actor))


def can_manage_setups_of(actor: Actor | None, owner: Any) -> bool:
    """List, read, change and delete ``owner``'s setups: the owner, moderators, administrators."""
    return is_authenticated(actor) and (actor.pk == owner.pk or is_moderator(actor))


def can_use_setup(user: Actor | None, setup: Any) -> bool:
    """Flash a setup onto a machine: its owner or an administrator.

    Not moderators: a setup may hold its owner's private images, which only
    the owner and administrators may read.
    """
    return is_authenticated(user) and (setup.owner_id == user.pk or is_administrator(user))
