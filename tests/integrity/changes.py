"""Changes to the catalogue and to people, as the lifecycle model makes them.

``Changes`` is mixed into the state machine of ``test_lifecycle_model`` (with ``Lab``);
its rules ``catalogue_change`` and ``people_change`` pick one of these.
"""

from __future__ import annotations

from typing import Any

from accounts.models import Role
from accounts.services import user_update
from catalogue.models import Version
from catalogue.storage import get_storage


class Changes:
    world: Any
    strays: set

    # --- The catalogue -----------------------------------------------------------------

    def upload(self, who: str, owner: str, which: str) -> None:
        self.upload_version(who, self.world.images[(owner, which)])

    def crash_leaves_a_file(self, owner: str, which: str) -> None:
        """An upload cut short by a crash left ``<n+1>.img`` without its row."""
        image = self.world.images[(owner, which)]
        latest = Version.objects.filter(image=image).order_by("-number").first()
        if latest is None:
            return
        path = get_storage().version_path(image.uuid, latest.number + 1, "none")
        path.write_bytes(b"half an image")
        self.strays.add(path)

    def retention(self, who: str, owner: str, which: str, keep: int | None) -> None:
        """Keep only the latest versions; the worker prunes the rest."""
        image = self.world.images[(owner, which)]
        body = {"keep_versions": keep}
        self.http(who, "patch", f"/api/image/{image.uuid}", body, ok=(200, 403, 404))

    def setup_edit(self, who: str, owner: str, kind: str) -> None:
        """Pin the setup's system image at its latest version (out, then in again)."""
        self.repin(who, owner, kind)

    # --- People ----------------------------------------------------------------------------

    def role_change(self, promote: bool) -> None:
        role = Role.ADMINISTRATOR if promote else Role.USER
        self.http("root", "patch", "/api/user/bob", {"role": role}, ok=(200,))

    def token_revoked(self, who: str) -> None:
        self.revoke_token(who)

    def deactivation(self, who: str, active: bool) -> None:
        """An administrator deactivates (or reactivates) a user in Django admin."""
        user = self.world.people[who].user
        user_update(actor=self.world.people["root"].user, user=user, is_active=active)
        if not active:
            self.http(who, "get", "/api/user/me", ok=(401, 403))
