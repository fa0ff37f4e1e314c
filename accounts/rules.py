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

from accounts import scopes

SYSTEM = "system"


class _Image(Protocol):
    owner_id: Any
    type: str
    maintainers: Any


def is_agent(user: Any) -> bool:
    """The management agent of one deployment (``flashing.authentication.AgentPrincipal``)."""
    return bool(getattr(user, "is_agent", False))


def is_authenticated(user: Any) -> bool:
    """A signed-in person. Agents are not: only the image rules below let them in."""
    return bool(user and user.is_authenticated and user.is_active) and not is_agent(user)


def is_administrator(user: Any) -> bool:
    return is_authenticated(user) and user.is_administrator


def is_moderator(user: Any) -> bool:
    """Moderators and above."""
    return is_authenticated(user) and (user.is_moderator or user.is_administrator)


def can_use_admin(user: Any) -> bool:
    """Django admin: administrators see everything, moderators their system images only."""
    return is_moderator(user)


def can_admin_everything(user: Any) -> bool:
    """Every admin page but the images: users, tokens, setups, machines, the queue."""
    return is_administrator(user)


def can_admin_image(user: Any, image: _Image | None = None) -> bool:
    """See an image in the admin: every image for administrators, for moderators only the
    system images assigned to them (``image=None`` asks about the list as a whole)."""
    if is_administrator(user):
        return True
    if image is None:
        return is_moderator(user)
    return image.type == SYSTEM and is_maintainer(user, image)


# --- Users and tokens ---------------------------------------------------------


def can_manage_user(actor: Any, target: Any) -> bool:
    """Read, change, delete a user, and manage their tokens: themselves or an administrator."""
    return is_authenticated(actor) and (actor.pk == target.pk or actor.is_administrator)


def can_create_user(actor: Any) -> bool:
    return is_administrator(actor)


def can_change_role(actor: Any) -> bool:
    return is_administrator(actor)


def needs_current_password(actor: Any, target: Any) -> bool:
    """Changing a password or email takes the current one, unless an administrator
    changes another user (who may have forgotten it)."""
    return not (is_administrator(actor) and actor.pk != target.pk)


def can_hand_over(actor: Any) -> bool:
    """Hand a deleted user's images, setups and deployments over to an administrator."""
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
        or user.is_administrator
        or is_maintainer(user, image)
    )


def can_write_image(user: Any, image: _Image) -> bool:
    """Change metadata and upload versions.

    A system image changes only through administrators, its assigned
    moderators, or an owner who is a moderator. An agent uploads only its
    deployment's sync images.
    """
    if is_agent(user):
        return image.pk in user.images("sync")
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


class TokenScopes(BasePermission):
    """A personal access token acts only within its scopes (``accounts.scopes``).

    First of the default permission classes, and the base of every permission
    class below: a view that declares its own permissions keeps the scope check.
    Subclasses put their own rule in ``allows``.
    """

    message = "You may not do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        allowed, why = scopes.request_allowed(request, view)
        if not allowed:
            self.message = why
            return False
        return self.allows(request, view)

    def allows(self, request: Request, view: Any) -> bool:
        return True


class IsAdministrator(TokenScopes):
    message = "Only administrators may do this."

    def allows(self, request: Request, view: Any) -> bool:
        return is_administrator(request.user)


class IsModerator(TokenScopes):
    message = "Only moderators and administrators may do this."

    def allows(self, request: Request, view: Any) -> bool:
        return is_moderator(request.user)


# --- Image setups ---------------------------------------------------------------
# From the original API table: a user's setups are created by the user or an
# administrator, and read, changed and deleted by the user, moderators (who look
# after the shared machines) and administrators. Which images a setup may hold is
# decided by its *owner's* rights (``can_read_image``/``can_write_image``), never
# by whoever edits it, so a moderator or administrator cannot smuggle an image
# into a setup whose owner could not read it.


def can_create_setup_for(actor: Any, owner: Any) -> bool:
    """Create a setup owned by ``owner``: the owner themselves or an administrator."""
    return is_authenticated(actor) and (actor.pk == owner.pk or actor.is_administrator)


def can_manage_setups_of(actor: Any, owner: Any) -> bool:
    """List, read, change and delete ``owner``'s setups: the owner, moderators, administrators."""
    return is_authenticated(actor) and (actor.pk == owner.pk or is_moderator(actor))


def can_use_setup(user: Any, setup: Any) -> bool:
    """Flash a setup onto a machine: its owner or an administrator.

    Not moderators: a setup may hold its owner's private images, which only
    the owner and administrators may read.
    """
    return is_authenticated(user) and (setup.owner_id == user.pk or user.is_administrator)


# --- Machines, leases and deployments ---------------------------------------------


def can_read_machines(user: Any) -> bool:
    """Every signed-in user sees the machines, their state and who holds them."""
    return is_authenticated(user)


def can_manage_machines(user: Any) -> bool:
    """Register, change and remove machines, and read their power settings."""
    return is_administrator(user)


def can_lease_machine(user: Any) -> bool:
    """Whether a machine is free to lease is the services' business; any user may ask."""
    return is_authenticated(user)


def can_end_lease(user: Any, lease: Any) -> bool:
    """Release a lease: its holder or an administrator."""
    return is_authenticated(user) and (lease.user_id == user.pk or user.is_administrator)


def can_deploy_on(user: Any, lease: Any | None) -> bool:
    """Queue deployments on a machine: the holder of its active lease, or an administrator."""
    if not is_authenticated(user):
        return False
    return user.is_administrator or (lease is not None and lease.user_id == user.pk)


def can_read_deployment(user: Any, deployment: Any) -> bool:
    """A deployment is its requester's, and every administrator's."""
    return is_authenticated(user) and (
        deployment.requested_by_id == user.pk or user.is_administrator
    )


def can_cancel_deployment(user: Any, deployment: Any) -> bool:
    return can_read_deployment(user, deployment)


class CanManageMachines(TokenScopes):
    """Reads for every signed-in user; writes for administrators."""

    message = "Only administrators may register, change or remove machines."

    def allows(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return can_read_machines(request.user)
        return can_manage_machines(request.user)
