"""What the flashing services share: the event log, which images go on disks, and sending
the pipeline's tasks once the transaction commits."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import Model, QuerySet

from accounts.rules import Actor
from accounts.services import audit_record
from baas_site.text import plain_text
from catalogue.models import ImageType
from flashing.exceptions import MachineConflict
from flashing.models import Deployment, DeploymentEvent, DeploymentImage, Machine

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


def lock(model: type[Model], pk: Any) -> Any:
    """The row, locked until the end of the transaction (``select_for_update``)."""
    return model.objects.select_for_update().get(pk=pk)


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


def boot_image_row(deployment: Deployment) -> DeploymentImage | None:
    """The deployment's boot image, if its setup names one."""
    rows = deployment.images.filter(
        direction=DeploymentImage.Direction.WRITE, image__type=ImageType.BOOT
    )
    return rows.select_related("image", "version").first()


# --- Firing tasks after commit ------------------------------------------------------


def task_send(task_name: str, **kwargs: Any) -> None:
    """Send a task; a broker outage is logged, not raised: the watchdog catches up."""
    from flashing import tasks  # tasks import the services: only when a task is sent

    try:
        getattr(tasks, task_name).apply_async(kwargs=kwargs)
    except Exception:  # the request that committed must not fail for it
        log.exception("could not send %s(%s); the watchdog will catch up", task_name, kwargs)


def on_commit_send(task_name: str, **kwargs: Any) -> None:
    transaction.on_commit(lambda: task_send(task_name, **kwargs))


def machine_kick(*, machine_id: int) -> None:
    """After commit, start the machine's next deployment if nothing runs on it."""
    on_commit_send("machine_advance_task", machine_id=machine_id)
