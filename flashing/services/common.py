"""What the flashing services share: the event log, which images go on disks, and sending
tasks (by reference, after the commit: ``baas_site.tasks.TransactionAwareTask``)."""

from __future__ import annotations

import logging
import re
from typing import Any, TypedDict, TypeVar

from celery import Task
from django.db.models import Model, QuerySet

from accounts.rules import Actor
from accounts.services import audit_record
from baas_site.text import plain_text
from catalogue.models import ImageType
from flashing.exceptions import MachineConflict
from flashing.models import Deployment, DeploymentEvent, DeploymentImage, Machine

_M = TypeVar("_M", bound=Model)

log = logging.getLogger(__name__)


# The name the flashing services have raised a 409 by; the class is flashing.exceptions'.
Conflict = MachineConflict


def actor_or_none(actor: Actor | None) -> Any:
    """The user behind a change, or None for BAAS itself (beat, the pipeline)."""
    return actor if getattr(actor, "pk", None) else None


def event_record(
    *, deployment: Deployment, actor: Actor | None, action: str, message: str = "", **data: Any
) -> DeploymentEvent:
    """Log ``action`` in the deployment's event log and in the audit log.

    ``message`` is kept as plain text (``baas_site.text.plain_text``): whatever
    produced it, people read one line, never an HTML page or a traceback.
    """
    audit_record(actor=actor, action=f"deployment.{action}", target=deployment, **data)
    return DeploymentEvent.objects.create(
        deployment=deployment,
        actor=actor_or_none(actor),
        action=action,
        state=deployment.state,
        message=plain_text(message),
    )


def lock(model: type[_M], pk: Any) -> _M:
    """The row, locked until the end of the transaction.

    ``FOR NO KEY UPDATE``: it serialises every change to the row, yet lets
    another transaction insert a row that refers to it (an event of a locked
    deployment), which a plain ``FOR UPDATE`` would make wait. None of our
    changes touch a primary key, and a deletion takes the stronger lock itself.
    """
    return model._default_manager.select_for_update(no_key=True).get(pk=pk)


def lock_machine(machine: Machine) -> Machine:
    """Every change to a machine's lease or queue locks the machine row first.

    One lock, always the first one taken, so two requests for the same machine
    are serialised and never deadlock.
    """
    return lock(Machine, machine.pk)


def disk_writes(deployment: Deployment) -> QuerySet[DeploymentImage]:
    """The images a deployment writes onto the machine's disks.

    Every image to write but a boot image, which is served to the machine over
    the network (``flashing.services.boot``) and written nowhere.
    """
    return deployment.images.filter(direction=DeploymentImage.Direction.WRITE).exclude(
        image__type=ImageType.BOOT
    )


def on_disk(path: str, disk: str) -> bool:
    """``path`` is ``disk`` or one of its partitions (a disk ending in a digit: ``p`` N)."""
    rest = path[len(disk) :] if path.startswith(disk) else None
    pattern = r"(p\d+)?" if disk[-1:].isdigit() else r"\d*"
    return rest is not None and re.fullmatch(pattern, rest) is not None


def overlaps(path: str, other: str) -> bool:
    """The two places share bytes: the same, or a partition and its whole disk. A write to
    one leaves what is recorded on the other untrue."""
    return on_disk(path, other) or on_disk(other, path)


def boot_image_row(deployment: Deployment) -> DeploymentImage | None:
    """The deployment's boot image, if its setup names one."""
    rows = deployment.images.filter(
        direction=DeploymentImage.Direction.WRITE, image__type=ImageType.BOOT
    )
    return rows.select_related("image", "version").first()


# --- Sending tasks ----------------------------------------------------------------------


# The time limits of the deployment pipeline's short tasks.
class Limits(TypedDict):
    soft_time_limit: int
    time_limit: int


LIMITS: Limits = {"soft_time_limit": 240, "time_limit": 300}


def task_send(task: Task, *, queue: str | None = None, **kwargs: Any) -> None:
    """Send ``task`` with ``kwargs`` (once the transaction commits, if one is open); a broker
    outage is logged, not raised: the watchdog (or the mounts' reconcile beat) catches up."""
    try:
        if queue is None:
            task.apply_async(kwargs=kwargs)
        else:
            task.apply_async(kwargs=kwargs, queue=queue)
    except Exception:  # the request that committed must not fail for it
        log.exception("could not send %s(%s); the watchdog will catch up", task.name, kwargs)


class _Pipeline:
    """The deployment pipeline's task that starts a machine's next deployment.

    It is declared with the pipeline (``flashing.services.pipeline``), which imports
    this module, and handed over by ``FlashingConfig.ready()``: the modules below the
    pipeline (states, the queue) kick a machine without importing it."""

    machine_advance_task: Task | None = None


def machine_advance_task_set(task: Task) -> None:
    _Pipeline.machine_advance_task = task


def machine_kick(*, machine_id: int) -> None:
    """After commit, start the machine's next deployment if nothing runs on it."""
    task = _Pipeline.machine_advance_task
    if task is None:
        raise RuntimeError("flashing.services.pipeline is not loaded (FlashingConfig.ready)")
    task_send(task, machine_id=machine_id)
