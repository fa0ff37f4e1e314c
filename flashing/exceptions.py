"""Flashing's domain errors, each a kind of ``baas_site.exceptions``.

Services and selectors raise them; ``baas_site.errors`` alone says what each
kind answers over HTTP and how a page shows it.
"""

from __future__ import annotations

from typing import Any

from baas_site.exceptions import Conflict, Forbidden, Gone, Invalid, NotAuthenticated, NotFound


class InvalidInput(Invalid):
    """A field of a request about machines, leases or deployments is wrong."""


class NotYours(Forbidden):
    """The actor may see the machine, lease or deployment but not do this to it."""

    default_detail = "You may not do this."


class MachineNotFound(NotFound):
    default_detail = "No such machine."


class LeaseNotFound(NotFound):
    default_detail = "This machine is not leased."


class DeploymentNotFound(NotFound):
    """No such deployment, or not the actor's to see: the two look the same on purpose."""

    default_detail = "No such deployment, or not yours."


class MachineConflict(Conflict):
    """The request contradicts the machine's (or its queue's) current state."""

    default_detail = "This conflicts with the machine's current state."
    default_code = "conflict"


class DeploymentOver(Gone):
    """The agent's deployment is over: it should stop, not retry."""

    default_detail = "This deployment is over."
    default_code = "gone"

    @classmethod
    def of(cls, deployment: Any) -> DeploymentOver:
        return cls(
            f"Deployment #{deployment.pk} is {deployment.state}: there is nothing more to do "
            "for it; stop."
        )


class AgentNotAuthenticated(NotAuthenticated):
    """The agent's token does not (or no longer) stand for a running attempt."""

    default_code = "authentication_failed"
