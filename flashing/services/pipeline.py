"""The flashing pipeline: start a machine's next deployment, power it, watch it, finish it.

Every step takes IDs, locks the rows it changes and checks that it still
applies, so a step run twice (a task delivered again after a worker crash)
changes nothing the second time. The state lives in the database; a worker
restart loses nothing: the watchdog (Celery beat) finds deployments whose
power-on or agent went missing and retries them, a bounded number of times,
or fails them with a reason.

Attempts: each start or retry of a deployment is an *attempt* (``attempt``
1, 2, …). A new attempt revokes the previous attempt's tokens, so an agent
of an abandoned attempt can no longer report anything.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from baas_site.tasks import TransactionAwareTask
from catalogue.interface import (
    RenditionFailed,
    VersionCorrupt,
    version_digest_ensure,
    version_raw_ensure,
)
from catalogue.models import RawState, Version
from flashing.models import (
    OUT_OF_SERVICE,
    RUNNING_STATES,
    Deployment,
    DeploymentState,
    Machine,
)
from flashing.power import BootParams, PowerError, driver_for
from flashing.services.common import (
    LIMITS,
    boot_image_row,
    event_record,
    lock,
    lock_machine,
    machine_kick,
    task_send,
)
from flashing.services.deployments import deployment_plan_sync
from flashing.services.mounts import network_mounts_plan
from flashing.services.states import (
    attempt_begin,
    attempt_restart,
    deployment_needs_management_os,
    deployment_set_state,
)
from flashing.services.tokens import token_mint

log = logging.getLogger(__name__)
# A power task not done this long after its attempt began was lost: send it again
# (sooner for machines with a short boot timeout).
POWER_GRACE = timedelta(seconds=30)


# --- Settings per machine -------------------------------------------------------------


def timeouts(machine: Machine) -> tuple[int, int]:
    """(boot, progress) timeouts in seconds; a machine's power settings may override them."""
    values = machine.power_settings or {}
    boot = int(values.get("boot_timeout") or settings.BAAS_BOOT_TIMEOUT)
    progress = int(values.get("progress_timeout") or settings.BAAS_PROGRESS_TIMEOUT)
    return boot, progress


def public_url() -> str:
    return settings.BAAS_PUBLIC_URL or "http://127.0.0.1:8000"


def attempts_allowed() -> int:
    retries: int = settings.BAAS_DEPLOY_RETRIES
    return 1 + max(retries, 0)


# --- Start ---------------------------------------------------------------------------


@transaction.atomic
def machine_start_next(*, machine_id: int) -> Deployment | None:
    """Start the machine's next queued deployment (FIFO) unless one runs already.

    Returns the started deployment, or None when nothing was started (one runs,
    none is queued, the machine is out of service or unmanaged). Its power-on
    is sent after commit.
    """
    machine = lock(Machine, machine_id)
    if machine.state in OUT_OF_SERVICE or not machine.managed:
        return None
    if machine.deployments.filter(state__in=RUNNING_STATES).exists():
        return None
    queued = machine.deployments.filter(state=DeploymentState.QUEUED)
    deployment = queued.order_by("created_at", "id").first()
    if deployment is None:
        return None
    deployment_plan_sync(deployment=deployment)
    network_mounts_plan(deployment=deployment)
    if not deployment_needs_management_os(deployment):
        return _done_without_management_os(deployment)
    attempt_begin(deployment, timezone.now())
    deployment = deployment_set_state(
        actor=None,
        deployment=deployment,
        state=DeploymentState.BOOTING,
        message=f"Attempt 1 of {attempts_allowed()}: booting {machine.name} into the "
        f"management OS ({machine.power_driver} power driver).",
    )
    task_send(deployment_power_task, deployment_id=deployment.pk, attempt=deployment.attempt)
    return deployment


def _done_without_management_os(deployment: Deployment) -> Deployment:
    """Nothing to write or bring back (a setup of a boot image only): done at once.

    The machine then boots its boot image (or its disk) straight away, without
    spending a minute in the management OS.
    """
    deployment.started_at = timezone.now()
    deployment.save(update_fields=["started_at", "updated_at"])
    deployment.images.update(bytes_done=F("bytes_total"), phase="done")
    boot = boot_image_row(deployment)
    what = (
        f'its boot image "{boot.image.name}" v{boot.version_number}'
        if boot and boot.image
        else "its disk"
    )
    deployment = deployment_set_state(
        actor=None,
        deployment=deployment,
        state=DeploymentState.DONE,
        message=f"Nothing to write or bring back: {deployment.machine.name} boots {what} "
        "without the management OS.",
    )
    machine_kick(machine_id=deployment.machine_id)
    return deployment


def machine_advance(*, machine_id: int) -> str:
    """After a deployment ends (or one is queued): start the next, or boot the machine's system
    (power it off, when its last deployment was cancelled while running).

    Booting into the system happens only when nothing runs and nothing waits.
    """
    _digests_of_next(machine_id)
    if machine_start_next(machine_id=machine_id) is not None:
        return "started"
    machine = Machine.objects.get(pk=machine_id)
    if machine.deployments.filter(state__in=[*RUNNING_STATES, DeploymentState.QUEUED]).exists():
        return "busy"
    last = machine.deployments.exclude(finished_at=None).order_by("-finished_at").first()
    if last is None or last.finished_at is None or not machine.managed:
        return "idle"
    if last.state == DeploymentState.CANCELLED:
        return _power_off_cancelled(machine, last)
    if last.events.filter(action="system").exists():
        return "idle"  # its machine was booted into its system already
    _power_system(machine, last)
    return "system"


def _power_off_cancelled(machine: Machine, deployment: Deployment) -> str:
    """A deployment cancelled while running left the machine in the management OS, or
    half-written: power it off (once), rather than boot what may be half a system.

    Only when nothing else starts (the next deployment power-cycles it anyway).
    The ``manual`` driver's answer tells a person to do it.
    """
    if deployment.started_at is None or deployment.events.filter(action="power_off").exists():
        return "idle"  # cancelled while queued: the machine was never touched
    try:
        message = driver_for(machine).power_off(machine)
    except PowerError as exc:
        message = f"Could not power {machine.name} off after the cancellation: {exc}"
    event_record(deployment=deployment, actor=None, action="power_off", message=message)
    return "off"


def _digests_of_next(machine_id: int) -> None:
    """Compute now, outside any lock, the SHA-256 that a large upload left to a background
    job, for every version the machine's next deployment writes: agents check against it.

    A version whose file no longer matches its upload is left to fail that deployment.
    """
    queued = Deployment.objects.filter(machine_id=machine_id, state=DeploymentState.QUEUED)
    deployment = queued.order_by("created_at", "id").first()
    if deployment is None:
        return
    versions = deployment.images.values("version")
    pending = Version.objects.filter(sha256="", pk__in=versions)
    for version in pending:
        try:
            version_digest_ensure(version)
        except (Version.DoesNotExist, VersionCorrupt) as exc:
            log.error("Version %s of deployment #%s: %s", version.pk, deployment.pk, exc)
    # A qcow2 version is written as the raw disk it describes: made now if its job is late.
    unconverted = Version.objects.filter(raw_state=RawState.PENDING, pk__in=versions)
    for version in unconverted.select_related("image"):
        try:
            version_raw_ensure(version)
        except (Version.DoesNotExist, RenditionFailed) as exc:
            log.error("Version %s of deployment #%s: %s", version.pk, deployment.pk, exc)


def _power_system(machine: Machine, deployment: Deployment) -> None:
    """Boot what was deployed: its boot image over the network, else the local disk."""
    boot = boot_image_row(deployment)
    what = (
        f'the boot image "{boot.image.name}" v{boot.version_number}'
        if boot and boot.image
        else "the system"
    )
    event_record(deployment=deployment, actor=None, action="system", message=f"Booting {what}.")
    try:
        driver = driver_for(machine)
        message = driver.boot_network(machine) if boot else driver.boot_disk(machine)
    except PowerError as exc:
        message = f"Could not boot {machine.name} into its system: {exc}"
    event_record(deployment=deployment, actor=None, action="power", message=message)


# --- Power on into the management OS --------------------------------------------------


def _claim_power(deployment_id: int, attempt: int) -> tuple[Deployment, BootParams | None] | None:
    """Mark the attempt's power-on as done (at most once), which arms the attempt.

    A power driver that takes the boot token gets the attempt's one token here;
    then no boot script of this attempt carries another (flashing.services.boot).
    """
    with transaction.atomic():
        deployment = lock(Deployment, deployment_id)
        if (
            deployment.state != DeploymentState.BOOTING
            or deployment.attempt != attempt
            or deployment.powered_attempt >= attempt
        ):
            return None
        deployment.powered_attempt = attempt
        deployment.save(update_fields=["powered_attempt", "updated_at"])
        machine = deployment.machine
        params = None
        if driver_for(machine).wants_token:
            mac = machine.mac_addresses.order_by("id").values_list("address", flat=True).first()
            secret = token_mint(deployment=deployment, kind="boot")
            deployment.boot_token_attempt = attempt
            deployment.save(update_fields=["boot_token_attempt", "updated_at"])
            params = BootParams(public_url(), mac or "", secret, deployment.pk)
        return deployment, params


def deployment_power(*, deployment_id: int, attempt: int) -> str:
    """Ask the power driver to boot the machine into the management OS, once per attempt."""
    try:
        claimed = _claim_power(deployment_id, attempt)
    except PowerError as exc:  # an unknown driver
        deployment_retry_or_fail(deployment_id=deployment_id, attempt=attempt, reason=str(exc))
        return "failed"
    if claimed is None:
        return "skipped"
    deployment, params = claimed
    machine = deployment.machine
    try:
        message = driver_for(machine).boot_management(machine, params)
    except PowerError as exc:
        deployment_retry_or_fail(deployment_id=deployment_id, attempt=attempt, reason=str(exc))
        return "failed"
    event_record(deployment=deployment, actor=None, action="power", message=message)
    return "powered"


# --- Retry, fail, finish ---------------------------------------------------------------


def deployment_fail(*, actor: Any, deployment: Deployment, reason: str) -> Deployment:
    """Fail a running deployment with ``reason``; the machine moves on after commit."""
    with transaction.atomic():
        deployment = deployment_set_state(
            actor=actor, deployment=deployment, state=DeploymentState.FAILED, message=reason
        )
    return deployment


@transaction.atomic
def deployment_retry_or_fail(*, deployment_id: int, attempt: int, reason: str) -> str:
    """The attempt ``attempt`` failed: start the next one, or fail the deployment.

    A retry puts the deployment back to ``booting`` whatever state it reached
    (outside ``TRANSITIONS``, which describe one attempt). Nothing happens if
    the deployment moved on meanwhile (finished, or another attempt began).
    """
    deployment = Deployment.objects.select_related("machine").get(pk=deployment_id)
    lock_machine(deployment.machine)
    deployment = lock(Deployment, deployment_id)
    if deployment.state not in RUNNING_STATES or deployment.attempt != attempt:
        return "stale"
    if attempt >= attempts_allowed():
        deployment_fail(
            actor=None,
            deployment=deployment,
            reason=f"Failed after {attempt} attempt(s); the last one: {reason}",
        )
        return "failed"
    attempt_restart(deployment, timezone.now())
    event_record(
        deployment=deployment,
        actor=None,
        action="retry",
        message=f"Attempt {attempt} failed: {reason}. Attempt {deployment.attempt} of "
        f"{attempts_allowed()}: booting the management OS again.",
    )
    task_send(deployment_power_task, deployment_id=deployment.pk, attempt=deployment.attempt)
    return "retried"


# --- Watchdog ---------------------------------------------------------------------------


def _overdue(deployment: Deployment, now: datetime) -> str | None:
    """Why the deployment's attempt is lost, or None while it is fine."""
    boot, progress = timeouts(deployment.machine)
    if deployment.checked_in_at is None:
        started = deployment.booted_at or deployment.updated_at
        if now - started > timedelta(seconds=boot):
            return f"the machine did not check in within {boot} s of its power-on"
        return None
    last = deployment.heartbeat_at or deployment.checked_in_at
    if now - last > timedelta(seconds=progress):
        return f"the agent went silent: no progress for {progress} s"
    return None


def _power_grace(machine: Machine) -> timedelta:
    return min(POWER_GRACE, timedelta(seconds=timeouts(machine)[0] / 4))


def _watch_running(now: datetime) -> dict[str, int]:
    counts = {"retried": 0, "failed": 0, "repowered": 0}
    running = Deployment.objects.filter(state__in=RUNNING_STATES).select_related("machine")
    for deployment in running:
        reason = _overdue(deployment, now)
        if reason is not None:
            outcome = deployment_retry_or_fail(
                deployment_id=deployment.pk, attempt=deployment.attempt, reason=reason
            )
            counts[outcome] = counts.get(outcome, 0) + 1
        elif (
            deployment.powered_attempt < deployment.attempt
            and deployment.booted_at is not None
            and now - deployment.booted_at > _power_grace(deployment.machine)
        ):
            # Its power task was lost (a worker crash, a broker outage): send it again.
            task_send(
                deployment_power_task, deployment_id=deployment.pk, attempt=deployment.attempt
            )
            counts["repowered"] += 1
    return counts


def deployments_watchdog(*, now: datetime | None = None) -> dict[str, int]:
    """Retry or fail lost attempts; start queued deployments whose start was lost."""
    now = now or timezone.now()
    counts = _watch_running(now)
    waiting = (
        Machine.objects.filter(deployments__state=DeploymentState.QUEUED, managed=True)
        .exclude(state__in=OUT_OF_SERVICE)
        .exclude(deployments__state__in=RUNNING_STATES)
        .values_list("pk", flat=True)
        .distinct()
    )
    counts["started"] = sum(
        1 for machine_id in list(waiting) if machine_start_next(machine_id=machine_id)
    )
    return counts


# --- Its tasks (declared here, where they are sent; ``flashing.tasks`` names them) ----------


@shared_task(name="flashing.machine_advance", base=TransactionAwareTask, **LIMITS)
def machine_advance_task(machine_id: int) -> str:
    """Start the machine's next deployment, or boot it into its system when idle."""
    return machine_advance(machine_id=machine_id)


@shared_task(name="flashing.deployment_power", base=TransactionAwareTask, **LIMITS)
def deployment_power_task(deployment_id: int, attempt: int) -> str:
    """Power the machine into the management OS for ``attempt`` (at most once per attempt)."""
    return deployment_power(deployment_id=deployment_id, attempt=attempt)
