"""What the model knows of agents and boot tokens, and the promises about them.

A boot token reaches an agent from a boot script or from a ``command`` power driver;
the agent checks in with it, gets its instructions and image bytes, reports progress
and its result. The promises (issue 16, and the machine-identity rules):

* a machine gets a token, instructions or image bytes only for a deployment that is
  running and legitimate (``invariants.deployment_is_legitimate``);
* one boot token per boot attempt, one check-in per attempt (a second one: 409);
* bytes go only to the agent that checked in for the deployment's current attempt;
* a dead token gets 401 (410 for the agent token of a finished deployment) and
  changes nothing.
"""

from __future__ import annotations

from typing import Any

from flashing.models import FINAL_STATES, RUNNING_STATES, Deployment
from tests.integrity.invariants import deployment_is_legitimate, promise
from tests.integrity.world import Agent


def snapshot(deployment_id: int) -> tuple[Any, ...]:
    """What a dead token must not change about its deployment."""
    d = Deployment.objects.get(pk=deployment_id)
    return (
        d.state,
        d.attempt,
        d.updated_at,
        d.heartbeat_at,
        d.checked_in_at,
        d.events.count(),
        d.images.filter(bytes_done__gt=0).count(),
    )


def describe(deployment_id: int) -> str:
    """The deployment as the model sees it, for messages."""
    d = Deployment.objects.select_related("lease", "requested_by").get(pk=deployment_id)
    lease = f"lease #{d.lease_id} ended {d.lease.ended_at}" if d.lease else "no lease"
    return f"#{d.pk} {d.kind} by {d.requested_by}, {d.state}, attempt {d.attempt}, {lease}"


class Agents:
    """Every agent the model started, which attempt each one bound, which were probed dead."""

    def __init__(self, admin_requested: set[int]):
        self.all: list[Agent] = []
        self.bound: dict[tuple[int, int], Agent] = {}
        self.tokens_per_attempt: dict[tuple[int, int], int] = {}
        self.admin_requested = admin_requested
        self.probed: set[int] = set()

    def booted(self, *, machine: str, deployment_id: int, secret: str, source: str) -> Agent:
        """A boot token reached a machine: check that it may, and remember the agent."""
        deployment = Deployment.objects.select_related("lease").get(pk=deployment_id)
        promise(
            "serving",
            deployment.state in RUNNING_STATES,
            f"{machine} got a boot token ({source}) for deployment #{deployment_id}, "
            f"which is {deployment.state}.",
        )
        promise(
            "serving",
            deployment_is_legitimate(deployment, self.admin_requested),
            f"{machine} got a boot token ({source}) for deployment #{deployment_id}, "
            f"whose lease #{deployment.lease_id} is over: someone else's system.",
        )
        key = (deployment_id, deployment.attempt)
        self.tokens_per_attempt[key] = self.tokens_per_attempt.get(key, 0) + 1
        promise(
            "one-token-per-attempt",
            self.tokens_per_attempt[key] == 1,
            f"{machine} got a second boot token ({source}) for attempt {deployment.attempt} "
            f"of deployment #{deployment_id}: a boot token is minted once per attempt.",
        )
        agent = Agent(
            machine=machine,
            deployment_id=deployment_id,
            attempt=deployment.attempt,
            boot_secret=secret,
        )
        self.all.append(agent)
        return agent

    def pick(self, index: int, *, checked_in: bool | None = None) -> Agent | None:
        agents = [a for a in self.all if checked_in is None or bool(a.secret) == checked_in]
        return agents[index % len(agents)] if agents else None

    def is_current(self, agent: Agent) -> bool:
        """Whether the agent's token should still work: its attempt runs, legitimately."""
        deployment = Deployment.objects.select_related("lease").get(pk=agent.deployment_id)
        return (
            deployment.state in RUNNING_STATES
            and deployment.attempt == agent.attempt
            and deployment_is_legitimate(deployment, self.admin_requested)
        )

    def may_get_bytes(self, agent: Agent) -> bool:
        """Only the agent that checked in for the current attempt gets instructions and bytes."""
        key = (agent.deployment_id, agent.attempt)
        return self.is_current(agent) and self.bound.get(key) is agent

    def expected_dead_status(self, agent: Agent) -> tuple[int, ...]:
        """401, or 410 for the agent token of a deployment that finished."""
        deployment = Deployment.objects.get(pk=agent.deployment_id)
        if deployment.state not in FINAL_STATES:
            return (401, 410)  # its lease is over: cancelled in the end (checked elsewhere)
        if agent.secret and deployment.attempt == agent.attempt:
            return (410,)
        return (401, 410)

    def dead_unprobed(self) -> list[Agent]:
        return [a for a in self.all if id(a) not in self.probed and not self.is_current(a)]
