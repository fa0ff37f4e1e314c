"""``Authorization: Bearer baasboot_…`` / ``baasagent_…``: the management agent.

``request.user`` becomes an :class:`AgentPrincipal` bound to one deployment:
signed in, but no ``User`` (no ``pk``), no role, and let through only to the
agent's own routes and the image upload and download routes, where
``catalogue.rules`` decides per image (its deployment's images only).
A token of the running attempt passes; one of a finished deployment answers
410 (stop); any other (unknown, revoked, expired, older attempt) 401
(docs/security.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from flashing.exceptions import DeploymentOver, MachineConflict
from flashing.models import AgentToken, AgentTokenKind, Deployment, DeploymentImage
from flashing.services.tokens import TokenVerdict, is_agent_secret, token_check

# (route name, method) an agent token may use; everything else is refused.
AGENT_ROUTES = {
    ("agent-checkin", "POST"),
    ("agent-instructions", "GET"),
    ("agent-progress", "POST"),
    ("agent-log", "POST"),
    ("agent-result", "POST"),
    ("image-detail", "POST"),
    ("image-download", "GET"),
    ("image-download", "HEAD"),
    ("image-download-latest", "GET"),
    ("image-download-latest", "HEAD"),
    ("image-version-map", "GET"),
    ("image-version-data", "GET"),
    ("image-version-hashes", "GET"),  # a delta sync-back's base block hashes
}


@dataclass
class AgentPrincipal:
    """The agent of one deployment. Duck-types the parts of a user that checks read."""

    token: AgentToken
    deployment: Deployment
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False
    is_administrator: bool = False
    is_moderator: bool = False
    is_staff: bool = False
    is_superuser: bool = False
    is_agent: bool = True
    # The disk an upload says it brings back (``?disk=``), checked to be one of the
    # deployment's sync rows of the image (:meth:`AgentTokenAuthentication.authenticate`).
    disk: str | None = None
    _images: dict[str, set[Any]] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.token.kind

    @property
    def username(self) -> str:
        return f"agent of deployment #{self.deployment.pk}"

    def __str__(self) -> str:
        return self.username

    def upload_note(self, image_id: Any, disk: str | None = None) -> str:
        """The note of a version this agent brings back: where it came from.

        It names ``disk`` (else the disk the upload named, :attr:`disk`) when it is
        one the deployment brings the image back from; without one, every such disk
        ("/dev/sda2 or /dev/sdb": an older agent does not say which). It also makes a
        retried upload recognisable (catalogue.services.uploads): the same bytes with
        the same note are the same version.
        """
        disks = self.sync_disks(image_id)
        named = disk or self.disk
        where = named if named in disks else " or ".join(disks) or "a disk"
        machine = self.deployment.machine.name
        return f"Synced back from {where} of {machine} by deployment #{self.deployment.pk}."

    def sync_disks(self, image_id: Any) -> list[str]:
        """The disks the deployment brings image ``image_id`` back from (its sync rows)."""
        try:
            image = uuid.UUID(str(image_id))
        except ValueError:
            return []
        rows = DeploymentImage.objects.filter(
            deployment=self.deployment, image_id=image, direction=DeploymentImage.Direction.SYNC
        )
        return list(rows.order_by("id").values_list("disk", flat=True))

    def images(self, direction: str) -> set[Any]:
        """UUIDs of the deployment's images to write (``write``), bring back (``sync``)
        or serve over the network (``mount``); an empty set for any other direction."""
        if self._images is None:
            found: dict[str, set[Any]] = {value: set() for value in DeploymentImage.Direction}
            rows = DeploymentImage.objects.filter(deployment=self.deployment, image__isnull=False)
            for direction_, image_id in rows.values_list("direction", "image_id"):
                found.setdefault(direction_, set()).add(image_id)
            self._images = found
        return self._images.get(direction, set())


class DeploymentGone(exceptions.APIException):
    """410: the token's deployment is over; the agent should stop, not retry."""

    status_code = status.HTTP_410_GONE
    default_detail = "This deployment is over."
    default_code = "gone"

    @classmethod
    def of(cls, deployment: Deployment) -> DeploymentGone:
        """The same answer as the agent service's ``DeploymentOver``."""
        return cls(DeploymentOver.of(deployment).detail)


class AgentTokenAuthentication(BaseAuthentication):
    """Agent tokens only; any other bearer token is left to the next class."""

    def authenticate(self, request: Request) -> tuple[AgentPrincipal, AgentToken] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != b"bearer":
            return None
        secret = parts[1].decode("ascii", errors="replace")
        if not is_agent_secret(secret):
            return None
        token, verdict = token_check(secret)
        if token is not None and verdict == TokenVerdict.GONE:
            raise DeploymentGone.of(token.deployment)
        if token is None or verdict != TokenVerdict.LIVE:
            raise exceptions.AuthenticationFailed(
                "Invalid, revoked or expired agent token, or one of an older boot attempt."
            )
        match = getattr(request._request, "resolver_match", None)
        route = (getattr(match, "url_name", None), request.method)
        if route not in AGENT_ROUTES:
            raise exceptions.PermissionDenied("An agent token is good only for the agent's calls.")
        if token.kind == AgentTokenKind.BOOT and route[0] != "agent-checkin":
            raise exceptions.AuthenticationFailed("A boot token is good only for the check-in.")
        principal = AgentPrincipal(token=token, deployment=token.deployment)
        if route == ("image-detail", "POST") and "disk" in request.query_params:
            principal.disk = _sync_disk(principal, match, request.query_params["disk"])
        return principal, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="agent"'


def _sync_disk(principal: AgentPrincipal, match: Any, disk: str) -> str:
    """The disk an upload names (``?disk=``), refused (409) unless the deployment brings
    the image back from it: the agent token proves the deployment, not the disk."""
    image_id = match.kwargs.get("image_id") if match is not None else None
    if disk not in principal.sync_disks(image_id):
        raise MachineConflict(
            f"Deployment #{principal.deployment.pk} does not bring image {str(image_id)[:64]} back "
            f"from {disk[:255]}: nothing was uploaded."
        )
    return disk


def is_agent(user: Any) -> bool:
    return isinstance(user, AgentPrincipal)


class AgentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "flashing.authentication.AgentTokenAuthentication"
    name = "agentAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The management agent: a one-time boot token (check-in), "
            "then the deployment-bound token it was exchanged for.",
        }
