"""Who someone is: role predicates, and the rules about users and their tokens.

Role semantics from the original BAAS:

* users use system images and modify only their own images;
* moderators also modify the system images assigned to them;
* administrators (and Django superusers) modify everything.

The rules about images and setups live in ``catalogue.rules``, those about
machines, leases and deployments in ``flashing.rules``; both are built on the
predicates here. DRF's permission classes are in ``accounts.permissions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeGuard

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from accounts.models import User


class Agent(Protocol):
    """A machine's management agent acting for one deployment, as the rules see it.

    ``flashing.authentication.AgentPrincipal`` is one: signed in, with no
    ``User`` row and no role, allowed only its deployment's images.
    """

    is_agent: bool
    is_authenticated: bool
    is_active: bool
    is_administrator: bool
    is_moderator: bool

    def images(self, direction: str) -> set[Any]: ...

    def upload_note(self, image_id: Any) -> str: ...


# Whoever a service acts for: a person (signed in or not) or a machine's agent.
Actor: TypeAlias = "User | AnonymousUser | Agent"


def is_baas(actor: Actor | None) -> bool:
    """BAAS itself acting (beat ending a lease, the pipeline, a command): ``actor`` is None.

    Services let BAAS do what its schedules, pipeline and commands need; every
    person and agent goes through the rules.
    """
    return actor is None


def is_agent(user: Actor | None) -> TypeGuard[Agent]:
    """The management agent of one deployment (``flashing.authentication.AgentPrincipal``)."""
    return bool(getattr(user, "is_agent", False))


def is_authenticated(user: Actor | None) -> TypeGuard[User]:
    """A signed-in person. Agents are not: only the image rules let them in."""
    return bool(user and user.is_authenticated and user.is_active) and not is_agent(user)


def is_administrator(user: Actor | None) -> TypeGuard[User]:
    return is_authenticated(user) and bool(user.is_administrator)


def is_moderator(user: Actor | None) -> TypeGuard[User]:
    """Moderators and above."""
    return is_authenticated(user) and bool(user.is_moderator or user.is_administrator)


def can_use_admin(user: Actor | None) -> bool:
    """Django admin: administrators see everything, moderators their system images only."""
    return is_moderator(user)


def can_admin_everything(user: Actor | None) -> bool:
    """Every admin page but the images: users, tokens, setups, machines, the queue."""
    return is_administrator(user)


# --- Users and tokens ---------------------------------------------------------


def can_manage_user(actor: Actor | None, target: Any) -> bool:
    """Read, change, delete a user, and manage their tokens: themselves or an administrator."""
    return is_authenticated(actor) and (actor.pk == target.pk or bool(actor.is_administrator))


def can_create_user(actor: Actor | None) -> bool:
    return is_administrator(actor)


def can_change_role(actor: Actor | None) -> bool:
    return is_administrator(actor)


def needs_current_password(actor: Actor | None, target: Any) -> bool:
    """Changing a password or email takes the current one, unless an administrator
    changes another user (who may have forgotten it)."""
    return not (is_administrator(actor) and actor.pk != target.pk)


def can_hand_over(actor: Actor | None) -> bool:
    """Hand a deleted user's images, setups and deployments over to an administrator."""
    return is_administrator(actor)
