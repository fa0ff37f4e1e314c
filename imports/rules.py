"""Who may import, as plain predicates (``catalogue.rules`` style).

Importing makes an image's next version, so who may import is who may upload to
the image: its owner, for system images its assigned moderators (or an owner
who is a moderator), and administrators. Agents never import. The services
enforce these (``import_create``, ``import_get_visible``); views only ask them
to decide what to show.
"""

from __future__ import annotations

from typing import Any

from accounts.rules import Actor, is_agent
from catalogue.interface import can_write_image


def can_import_image(user: Actor | None, image: Any) -> bool:
    """Import into ``image``: whoever may upload to it, never an agent."""
    return not is_agent(user) and can_write_image(user, image)


def can_see_import(user: Actor | None, job: Any) -> bool:
    """See (and cancel) an import: who may import into its image."""
    return can_import_image(user, job.image)
