"""A user's images and setups, for deleting users (``accounts.ownership``)."""

from __future__ import annotations

from typing import Any

from accounts import ownership
from accounts.services import audit_record
from catalogue.models import Image, ImageSetup


def catalogue_owned(user: Any) -> list[str]:
    """A line per image and per setup ``user`` owns."""
    images = Image.objects.filter(owner=user).order_by("name", "created_at")
    setups = ImageSetup.objects.filter(owner=user).order_by("name", "created_at")
    return [f"image {i.name} ({i.uuid})" for i in images] + [
        f"setup {s.name} ({s.uuid})" for s in setups
    ]


def catalogue_release(actor: Any, user: Any) -> None:
    """Images and setups are handed over, never ended: nothing to do."""


def catalogue_transfer(actor: Any, user: Any, to: Any) -> None:
    """Make ``to`` the owner of ``user``'s images and setups, recording each."""
    for model, action in ((Image, "image.hand_over"), (ImageSetup, "setup.hand_over")):
        for row in model.objects.select_for_update().filter(owner=user):
            row.owner = to
            row.save(update_fields=["owner", "updated_at"])
            audit_record(actor=actor, action=action, target=row, old=user.username, new=to.username)


def register() -> None:
    ownership.register(
        label="catalogue",
        owned=catalogue_owned,
        release=catalogue_release,
        transfer=catalogue_transfer,
    )
