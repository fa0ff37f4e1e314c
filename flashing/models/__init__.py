"""Machines, their leases, and the deployments queued on them.

State lives in three places, each with one job:

* ``Lease`` says who holds a machine (at most one active lease per machine,
  enforced by the database);
* ``Deployment`` is a setup queued for a machine, first in first out, with its
  progress (``DeploymentImage``) and its log (``DeploymentEvent``);
* ``Machine.state`` summarises both for people: ``available`` or ``leased``
  when idle, ``deploying`` while the pipeline runs one, and ``error`` or
  ``maintenance`` when administrators (or failures) take it out of service.

One module per concern, all imported from here: ``machines`` (machines, their
MAC addresses and disks, what the disks hold), ``leases``, ``deployments``
(with their states, images and events), ``mounts`` (network mounts) and
``boot`` (the agent's tokens, unknown MAC addresses). They are imported in
this order (``isort: split``), so the models are registered in the order they
were declared in when this was one module.
"""

from flashing.models.machines import (
    MAC_RE,
    OUT_OF_SERVICE,
    SECRET_MASK,
    SERVICE_STATES,
    Architecture,
    DiskContent,
    MacAddress,
    Machine,
    MachineDisk,
    MachineState,
    PowerDriver,
    is_secret_setting,
    mask_power_settings,
    normalize_mac,
)

# isort: split
from flashing.models.leases import Lease, LeaseEndReason

# isort: split
from flashing.models.deployments import (
    ACTIVE_STATES,
    FINAL_STATES,
    RUNNING_STATES,
    Deployment,
    DeploymentEvent,
    DeploymentImage,
    DeploymentKind,
    DeploymentState,
)

# isort: split
from flashing.models.mounts import LIVE_MOUNT_STATES, NetworkMount, NetworkMountState

# isort: split
from flashing.models.boot import AgentToken, AgentTokenKind, UnknownMac

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "LIVE_MOUNT_STATES",
    "MAC_RE",
    "OUT_OF_SERVICE",
    "RUNNING_STATES",
    "SECRET_MASK",
    "SERVICE_STATES",
    "AgentToken",
    "AgentTokenKind",
    "Architecture",
    "Deployment",
    "DeploymentEvent",
    "DeploymentImage",
    "DeploymentKind",
    "DeploymentState",
    "DiskContent",
    "Lease",
    "LeaseEndReason",
    "MacAddress",
    "Machine",
    "MachineDisk",
    "MachineState",
    "NetworkMount",
    "NetworkMountState",
    "PowerDriver",
    "UnknownMac",
    "is_secret_setting",
    "mask_power_settings",
    "normalize_mac",
]
