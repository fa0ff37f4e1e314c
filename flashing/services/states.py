"""The one table of a deployment's states, and the one function that changes them.

Every change of a deployment's state — by the pipeline, the agent, a person
cancelling, a lease ending — goes through ``deployment_set_state``, which
checks ``TRANSITIONS``, records the event and does what every such change
owes the rest of BAAS:

* a deployment that ends (done, failed, cancelled) takes its agent and boot
  tokens with it, and the machine moves on to its next deployment;
* one that ends while running without the agent's success (failed, or
  cancelled) forgets what was recorded on the disks it had begun to write, so
  nothing later takes a half-written disk for what it held, and its network
  mounts end (their changes are stored as the next version);
* a done one records what is now on the machine's disks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from baas_site.text import plain_text
from flashing.models import (
    FINAL_STATES,
    RUNNING_STATES,
    Deployment,
    DeploymentImage,
    DeploymentState,
)
from flashing.services.common import (
    Conflict,
    disk_writes,
    event_record,
    lock,
    lock_machine,
    machine_kick,
)
from flashing.services.machines import (
    disk_contents_forget,
    disk_contents_record,
    machine_settle_state,
)
from flashing.services.mounts import network_mounts_end_of
from flashing.services.queue import finish_deployment
from flashing.services.tokens import tokens_revoke

# Where each state may go next within one attempt. Besides these: any running state may
# end as failed or cancelled, and a queued deployment with nothing for the management OS
# to do goes straight to done. (A retry starts a new attempt: pipeline.deployment_retry_or_fail.)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    DeploymentState.QUEUED: (DeploymentState.BOOTING, DeploymentState.CANCELLED),
    DeploymentState.BOOTING: (DeploymentState.SYNCING, DeploymentState.WRITING),
    DeploymentState.SYNCING: (DeploymentState.WRITING, DeploymentState.DONE),
    DeploymentState.WRITING: (DeploymentState.VERIFYING,),
    DeploymentState.VERIFYING: (DeploymentState.WRITING, DeploymentState.DONE),
}
# The ends a running deployment may reach from any of its states.
STOPS = (DeploymentState.FAILED, DeploymentState.CANCELLED)


def deployment_needs_management_os(deployment: Deployment) -> bool:
    """Whether the agent has work: disks to write or bring back (a boot image is neither)."""
    syncs = deployment.images.filter(direction=DeploymentImage.Direction.SYNC)
    return syncs.exists() or disk_writes(deployment).exists()


def _check_transition(deployment: Deployment, state: str) -> None:
    allowed = TRANSITIONS.get(deployment.state, ())
    stopped = deployment.state in RUNNING_STATES and state in STOPS
    straight_to_done = (
        deployment.state == DeploymentState.QUEUED
        and state == DeploymentState.DONE
        and not deployment_needs_management_os(deployment)
    )
    if state not in allowed and not stopped and not straight_to_done:
        raise Conflict(f"Deployment #{deployment.pk} cannot go from {deployment.state} to {state}.")


def _finish(deployment: Deployment, state: str, actor: Any, message: str) -> None:
    was_running = deployment.state in RUNNING_STATES
    message = plain_text(message)
    deployment.failure_reason = message if state in STOPS else ""
    finish_deployment(deployment, state, actor, message)
    tokens_revoke(deployment=deployment)
    if state == DeploymentState.DONE:
        disk_contents_record(deployment=deployment)
    elif was_running:
        disk_contents_forget(deployment=deployment)
        network_mounts_end_of(deployment=deployment, why=f"Deployment #{deployment.pk} {state}.")
    machine_kick(machine_id=deployment.machine_id)


@transaction.atomic
def deployment_set_state(
    *, actor: Any, deployment: Deployment, state: str, message: str = ""
) -> Deployment:
    """Move a deployment to ``state`` (see ``TRANSITIONS``) and do what that change owes.

    Records the event, the timestamps and, for failed and cancelled, the reason
    (``message``, plain text); keeps the machine's state consistent. Locks the
    machine, then the deployment.
    """
    machine = lock_machine(deployment.machine)
    deployment = lock(Deployment, deployment.pk)
    _check_transition(deployment, state)
    if state in FINAL_STATES:
        _finish(deployment, state, actor, message)
    else:
        deployment.state = state
        deployment.started_at = deployment.started_at or timezone.now()
        deployment.save(update_fields=["state", "started_at", "updated_at"])
        event_record(deployment=deployment, actor=actor, action=state, message=message)
    machine_settle_state(actor=actor, machine=machine)
    return deployment


# --- Attempts --------------------------------------------------------------------------


def attempt_begin(deployment: Deployment, now: datetime) -> None:
    """A new attempt: fresh bookkeeping, old tokens revoked, progress reset.

    The deployment is locked by the caller.
    """
    deployment.attempt += 1
    deployment.booted_at = now
    deployment.checked_in_at = None
    deployment.heartbeat_at = None
    deployment.save(
        update_fields=["attempt", "booted_at", "checked_in_at", "heartbeat_at", "updated_at"]
    )
    tokens_revoke(deployment=deployment)
    deployment.images.update(bytes_done=0, phase="", rate=0.0, progress_at=None)


def attempt_restart(deployment: Deployment, now: datetime) -> None:
    """A running deployment starts over in a new attempt (a retry, a manual boot): booting.

    Outside ``TRANSITIONS``, which describe one attempt. The machine and the
    deployment are locked by the caller, who records why.
    """
    attempt_begin(deployment, now)
    deployment.state = DeploymentState.BOOTING
    deployment.save(update_fields=["state", "updated_at"])
