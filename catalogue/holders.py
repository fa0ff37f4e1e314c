"""What other apps hold of the catalogue's images, versions and setups (dependency inversion).

The catalogue knows nothing of the apps built on it, yet must not delete what
they still use: a version on a machine's disk, an image a queued deployment
will write, a setup a machine boots by default. Each such app registers, in
its ``AppConfig.ready()``, one :class:`Holder`: four callbacks that answer the
catalogue's questions about what it holds. With no holder registered (the
catalogue alone) nothing is held: every answer is "not in use".

* ``image_busy(image_uuid) -> bool``: work in progress needs the image (a
  temporal image's expiry waits for it): whatever ``image_delete_refusal``
  refuses a deletion for must count here too, or an expiry deletes it;
* ``versions_held(image) -> set[int]``: ids of the image's versions in use
  (pruning keeps them, whatever their age);
* ``image_delete_refusal(image) -> str | None``: why the image may not be
  deleted now, in words for its owner (the API answers 409); None: it may;
* ``setup_delete_refusal(setup) -> str | None``: the same for a setup.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalogue.models import Image, ImageSetup


@dataclass(frozen=True)
class Holder:
    """One app's answers; ``label`` names the app (registering again under it replaces it)."""

    label: str
    image_busy: Callable[[uuid.UUID], bool]
    versions_held: Callable[[Image], set[int]]
    image_delete_refusal: Callable[[Image], str | None]
    setup_delete_refusal: Callable[[ImageSetup], str | None]


_registry: dict[str, Holder] = {}


def register(holder: Holder) -> None:
    """Register ``holder`` (again under the same label replaces the former one)."""
    _registry[holder.label] = holder


def holders() -> tuple[Holder, ...]:
    """The registered holders, in the order they registered."""
    return tuple(_registry.values())


def image_busy(*, image_uuid: uuid.UUID) -> bool:
    """Whether work in progress in some app needs the image."""
    return any(holder.image_busy(image_uuid) for holder in _registry.values())


def versions_held(*, image: Image) -> set[int]:
    """Ids of ``image``'s versions some app uses now."""
    return set().union(*(holder.versions_held(image) for holder in _registry.values()))


def image_delete_refusal(*, image: Image) -> str | None:
    """The first reason an app gives not to delete ``image`` now; None when none does."""
    return _first(holder.image_delete_refusal(image) for holder in _registry.values())


def setup_delete_refusal(*, setup: ImageSetup) -> str | None:
    """The first reason an app gives not to delete ``setup`` now; None when none does."""
    return _first(holder.setup_delete_refusal(setup) for holder in _registry.values())


def _first(reasons: Iterable[str | None]) -> str | None:
    return next((reason for reason in reasons if reason), None)
