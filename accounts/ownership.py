"""What a user owns in other apps, for deleting users (dependency inversion).

``accounts`` knows nothing of images or machines. Apps that keep things a user
owns register, in their ``AppConfig.ready()``, three callbacks:

* ``owned(user) -> list[str]``: a plain line for each thing the user owns or
  holds (an image, a setup, a lease, a running deployment), empty when nothing;
* ``release(actor, user)``: end what cannot be handed over (a lease ends properly);
* ``transfer(actor, user, to)``: hand what remains over to the user ``to``.

``accounts.services.user_delete`` refuses to delete a user who owns anything,
listing it, unless an administrator asks to hand it all over to one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accounts.models import User
    from accounts.rules import Actor


@dataclass(frozen=True)
class Owner:
    """One app's callbacks; ``label`` names what it keeps, for messages."""

    label: str
    owned: Callable[[Any], list[str]]
    release: Callable[[Any, Any], None]
    transfer: Callable[[Any, Any, Any], None]


_registry: dict[str, Owner] = {}


def register(
    *,
    label: str,
    owned: Callable[[Any], list[str]],
    release: Callable[[Any, Any], None],
    transfer: Callable[[Any, Any, Any], None],
) -> None:
    """Register an app's callbacks (again under the same label replaces them)."""
    _registry[label] = Owner(label=label, owned=owned, release=release, transfer=transfer)


def owned(user: User) -> list[str]:
    """A plain line for everything ``user`` owns or holds, app by app."""
    return [line for owner in _registry.values() for line in owner.owned(user)]


def hand_over(*, actor: Actor | None, user: User, to: User) -> None:
    """End what ``user`` holds, then hand what they own to ``to``. Caller holds a transaction."""
    for owner in _registry.values():
        owner.release(actor, user)
    for owner in _registry.values():
        owner.transfer(actor, user, to)
