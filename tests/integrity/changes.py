"""Changes to the catalogue and to people, as the lifecycle model makes them.

``Changes`` is mixed into the state machine of ``test_lifecycle_model`` (with ``Lab``);
its rules ``catalogue_change`` and ``people_change`` pick one of these.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from accounts.models import Role
from accounts.services import user_update
from catalogue.models import Version
from catalogue.services.uploads.resumable import resumable_expire
from catalogue.storage import get_storage
from diskimage.sparse import encoded
from tests.integrity.invariants import promise, seen
from tests.integrity.world import after_commit, content

DRAFT = {"HTTP_UPLOAD_DRAFT_INTEROP_VERSION": "8"}


class Changes:
    world: Any
    strays: set
    resumables: list  # [who, upload URL, the whole content, bytes sent] of resumable uploads
    resumable_starts = 0  # how many the example started

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

    # --- Resumable uploads (draft-ietf-httpbis-resumable-upload) ------------------------

    def resumable(self, who: str, owner: str, which: str, action: str, index: int) -> None:
        """A resumable upload is started (part of its bytes in the creation), appended to,
        completed, abandoned, poked by someone else, or beat expires the unfinished ones."""
        if action == "start" or (action != "expire" and not self.resumables):
            self.resumable_start(who, self.world.images[(owner, which)])
        elif action == "expire":
            hours = settings.BAAS_UPLOAD_RESUME_HOURS
            resumable_expire(now=timezone.now() + timedelta(hours=hours, minutes=1))
        elif self.resumables:
            upload = self.resumables[index % len(self.resumables)]
            if action == "intrude":
                self._resumable_intrude(who, upload)
            else:
                self.resumable_send(upload, action)

    def _resumable_request(self, who: str, method: str, url: str, body: bytes, ok, **headers):
        person = self.world.people[who]
        person.user.refresh_from_db()
        if not person.user.is_active:
            ok = (401, 403)
        kind = headers.pop("content_type", "application/partial-upload")
        with after_commit():
            response = person.client.generic(method, url, body, content_type=kind, **headers)
        self.check_response(method, url, response, tuple(ok))
        return response

    def resumable_start(self, who: str, image: Any, *, sparse: bool | None = None) -> list | None:
        """Every other upload of an example, from its second, is an Android sparse image
        (what ``baas image push`` sends), which the server decodes as it arrives; the others
        are raw, kept as sent. Counted among the example's resumable uploads, not from the
        seed: how many versions other rules made before must not decide which kind is tried.
        Returns the upload (as kept in ``resumables``), or None if it was refused."""
        self.world.seed += 1
        data = content(self.world.seed)
        if sparse is None:
            sparse = self.resumable_starts % 2 == 1
        self.resumable_starts += 1
        wire = b"".join(encoded(data)) if sparse else data
        first = len(wire) // 3 + self.world.seed % 977
        kind = "application/vnd.android.sparse-image" if sparse else "application/octet-stream"
        response = self._resumable_request(
            who, "POST", f"/api/image/{image.uuid}", wire[:first], (201, 403, 404, 409, 413),
            content_type=kind, HTTP_UPLOAD_COMPLETE="?0", **DRAFT,
        )  # fmt: skip
        if response.status_code != 201:
            return None
        seen("resumable started" + (", sparse" if sparse else ""))
        upload = [who, response["Location"], wire, first, data]
        self.resumables.append(upload)
        return upload

    def resumable_send(self, upload: list, action: str) -> None:
        who, url, data, sent, raw = upload
        if action == "abandon":
            self._resumable_request(who, "DELETE", url, b"", (204, 404))
            self.resumables.remove(upload)
            return
        complete = action == "complete"
        end = len(data) if complete else min(len(data), sent + len(data) // 4 + 4099)
        response = self._resumable_request(
            who, "PATCH", url, data[sent:end], (201, 204, 400, 403, 404, 409, 413),
            HTTP_UPLOAD_OFFSET=str(sent), HTTP_UPLOAD_COMPLETE="?1" if complete else "?0", **DRAFT,
        )  # fmt: skip
        if response.status_code == 204:
            upload[3] = end
        elif response.status_code == 201:
            seen("resumable completed")
            if raw is not data:
                seen("resumable completed, sparse: decoded as it arrived")
            else:
                seen("resumable completed, raw: kept as sent")
            version = response.json()
            promise(
                "resumed-is-the-file",
                version["size"] == len(raw)
                and version["sha256"] in ("", None, hashlib.sha256(raw).hexdigest()),
                f"A resumed upload became {version}, not the {len(raw)} bytes sent.",
            )
            self.resumables.remove(upload)
        elif response.status_code == 404:  # expired, abandoned, or its image deleted
            self.resumables.remove(upload)

    def _resumable_intrude(self, who: str, upload: list) -> None:
        owner, url, _data, sent, _raw = upload
        if who == owner:
            return
        for method, body, extra in (
            ("HEAD", b"", {}),
            ("PATCH", b"x", {"HTTP_UPLOAD_OFFSET": str(sent), "HTTP_UPLOAD_COMPLETE": "?1"}),
            ("DELETE", b"", {}),
        ):
            response = self._resumable_request(who, method, url, body, (401, 403, 404), **extra)
            promise(
                "uploads-private",
                response.status_code in (401, 403, 404),
                f"{who} {method} {owner}'s upload {url}: {response.status_code}",
            )

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
