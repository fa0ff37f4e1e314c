"""Network mounts of user data images: served to a machine over NBD instead of flashed.

A setup entry with ``mount="network"`` (user data images only) is not written
by the agent. When its deployment starts, :func:`network_mounts_plan` creates a
``NetworkMount`` and a task starts the export on the NBD host: ``qemu-nbd``
serving a private qcow2 overlay over a read-only copy of the pinned version
(``flashing.nbd``). The agent's instructions carry its ``nbd://`` URL
(``flashing.services.mount_urls``), to that deployment's agent only.

The mount ends when its lease ends, when the next deployment starts on the
machine, or when its own deployment fails or never starts. Then a task stops
the export and, if the machine changed anything, stores base and overlay,
merged, as the image's next version through the catalogue's upload path
(sparse, SHA-256, quota, audit), noting where it came from. The overlay is
removed only once that version's row exists. Every step is idempotent and
serialised per mount (``nbd.mount_lock``); a failure is recorded on the row
and in the deployment's events, and retried (by the task, then by the
reconcile beat, ``flashing.services.mount_beat``).

For users, the trade-off: the machine boots sooner (nothing is written to its
disk), but every access crosses the network, and the changes become a version
only when the mount ends. NBD has no authentication, and a server lists its
export's name to whoever asks: bind the exports to the lab network only
(``BAAS_NBD_BIND``) and firewall the ports.
"""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypedDict

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from baas_site.exceptions import DomainError
from baas_site.tasks import TransactionAwareTask
from catalogue.interface import (
    VersionCorrupt,
    can_write_image,
    version_digest_ensure,
    version_store_file,
)
from catalogue.models import Image, Version
from flashing import nbd
from flashing.models import (
    LIVE_MOUNT_STATES,
    Deployment,
    DeploymentImage,
    Lease,
    Machine,
    NetworkMount,
    NetworkMountState,
)
from flashing.services.common import event_record, lock, lock_machine, task_send
from flashing.services.mount_urls import mount_url, nbd_ports

log = logging.getLogger(__name__)

STARTING, READY = NetworkMountState.STARTING, NetworkMountState.READY
ENDING, DONE, FAILED = NetworkMountState.ENDING, NetworkMountState.DONE, NetworkMountState.FAILED
SERVED = (STARTING, READY)
# Failed starts (or restarts) of an export before the mount is given up and ended.
START_ATTEMPTS = 5
# A starting or ending mount untouched this long lost its task: the beat sends it again.
STALE = timedelta(minutes=2)


class WrongHost(nbd.NbdError):
    """The mount's files and server are on another host than this worker."""


# --- Sending the tasks -------------------------------------------------------------------


# Network mounts decompress and upload whole images: the global (long) limits apply.
class _MountRetries(TypedDict):
    bind: Literal[True]
    max_retries: int


MOUNT_RETRIES: _MountRetries = {"bind": True, "max_retries": 4}
MOUNT_RETRY_SECONDS = 30


def send_step(step: str, **kwargs: Any) -> None:
    """Send a mount's ``start`` or ``finish`` task to the NBD host's queue (after the commit,
    if a transaction is open); a broker outage is left to the reconcile beat."""
    task = network_mount_finish_task if step == "finish" else network_mount_start_task
    task_send(task, queue=settings.BAAS_NBD_QUEUE or None, **kwargs)


def _event(mount: NetworkMount, message: str) -> None:
    event_record(
        deployment=mount.deployment,
        actor=None,
        action="network_mount",
        message=message,
        mount=mount.pk,
        image=str(mount.image_id),
        state=mount.state,
    )


def _label(mount: NetworkMount) -> str:
    name = mount.image.name if mount.image else "a deleted image"
    return f'the network mount of "{name}" v{mount.version_number} ({mount.disk})'


# --- Starting and ending (in the caller's transaction) ------------------------------------


def network_mounts_plan(*, deployment: Deployment) -> list[NetworkMount]:
    """At a deployment's start: end the machine's earlier mounts, create this one's.

    For the pipeline, in its transaction, the machine row locked. Idempotent:
    an image already mounted for this deployment is not mounted twice.
    """
    earlier = NetworkMount.objects.filter(deployment__machine_id=deployment.machine_id)
    _end_where(
        earlier.exclude(deployment=deployment),
        f"Deployment #{deployment.pk} started on {deployment.machine.name}.",
    )
    mounted = set(deployment.network_mounts.values_list("image_id", flat=True))
    lease = (
        deployment.lease
        or Lease.objects.filter(machine_id=deployment.machine_id, ended_at=None).first()
    )
    rows = deployment.images.filter(direction=DeploymentImage.Direction.MOUNT)
    created = []
    for row in rows.exclude(image=None).exclude(version=None).select_related("image", "version"):
        if row.image_id in mounted:
            continue
        mount = NetworkMount.objects.create(
            deployment=deployment,
            lease=lease,
            image=row.image,
            version=row.version,
            version_number=row.version_number,
            disk=row.disk,
            export_name=secrets.token_urlsafe(24),
            tls_psk=secrets.token_hex(32) if settings.BAAS_NBD_TLS_PSK else "",
        )
        _event(mount, f"Starting the export for {_label(mount)}: nothing is written to the disk.")
        send_step("start", mount_id=mount.pk)
        created.append(mount)
    return created


def network_mounts_end(*, lease: Lease, why: str) -> int:
    """End the mounts of ``lease`` (stop, store the changes) once the transaction commits."""
    return _end_where(NetworkMount.objects.filter(lease=lease), why)


def network_mounts_end_of(*, deployment: Deployment, why: str) -> int:
    """End the mounts of a deployment that ended without success (failed, cancelled)."""
    return _end_where(NetworkMount.objects.filter(deployment=deployment), why)


def network_mount_end(*, mount: NetworkMount, why: str) -> bool:
    """End one mount now (an administrator, or the beat); False if it was ending or ended."""
    with transaction.atomic():
        mount = _lock_mount(mount.pk)
        if mount.state not in SERVED:
            return False
        _begin_end(mount, why)
    return True


def _lock_mount(mount_id: int) -> NetworkMount:
    """The mount, locked after its machine: the order every change to a machine's work takes
    (machine, deployment, mount), so a step of the export never deadlocks with a release, a
    cancel or the next deployment, which hold the machine and the deployment when they end
    the machine's mounts."""
    machine = Machine.objects.filter(deployments__network_mounts__pk=mount_id).get()
    lock_machine(machine)
    return lock(NetworkMount, mount_id)


def _end_where(mounts: QuerySet[NetworkMount], why: str) -> int:
    """For callers holding the machine's lock (the order ``_lock_mount`` describes)."""
    ending = list(mounts.select_for_update(no_key=True).filter(state__in=SERVED))
    for mount in ending:
        _begin_end(mount, why)
    return len(ending)


def _begin_end(mount: NetworkMount, why: str) -> None:
    mount.state = ENDING
    mount.save(update_fields=["state", "updated_at"])
    _event(mount, f"{why} Ending {_label(mount)}: its changes become the next version.")
    send_step("finish", mount_id=mount.pk)


# --- The export (a task, on the NBD host) -----------------------------------------------


def _claim_directory(mount: NetworkMount) -> Path:
    """The mount's directory on this host; the first step to run here claims it."""
    here = socket.gethostname()
    if not mount.host:
        directory = Path(settings.BAAS_NBD_DIR) / mount.export_name
        unclaimed = NetworkMount.objects.filter(pk=mount.pk, host="")
        unclaimed.update(host=here, directory=str(directory))
        mount.refresh_from_db(fields=["host", "directory"])
    if mount.host != here:
        raise WrongHost(
            f"The export runs on {mount.host}, not on {here}: let only {mount.host}'s "
            "workers take the network mount queue (BAAS_NBD_QUEUE)."
        )
    return Path(mount.directory)


def network_mount_start(*, mount_id: int) -> str:
    """Serve the mount (or serve it again, if its server died); idempotent.

    Returns ``ready``, ``restarted``, ``running`` (nothing to do), ``skipped``
    (the mount is ending or over), ``busy`` (another step is at work on it),
    or ``failed`` (recorded; try again). A worker on another host than the
    mount's fails without counting towards giving up.
    """
    mount = NetworkMount.objects.filter(pk=mount_id).first()
    if mount is None or mount.state not in SERVED:
        return "skipped"
    try:
        directory = _claim_directory(mount)
        with nbd.mount_lock(directory):
            return _start_locked(mount_id, directory)
    except nbd.MountBusy:
        return "busy"  # the step holding the lock serves it
    except (nbd.NbdError, OSError) as exc:
        return _start_failed(mount_id, str(exc), counts=not isinstance(exc, WrongHost))


def _start_locked(mount_id: int, directory: Path) -> str:
    mount = NetworkMount.objects.select_related("image", "version").get(pk=mount_id)
    if mount.state not in SERVED:
        return "skipped"
    overlay = directory / nbd.OVERLAY
    if mount.state == READY and nbd.server_alive(pid=mount.pid, overlay=overlay):
        return "running"
    if mount.version is None or mount.image is None:
        raise nbd.NbdError(f"Version {mount.version_number} of the image was deleted.")
    # A server whose start was not recorded (a crash) holds the overlay's lock: stop it.
    nbd.server_stop(pid=nbd.recorded_pid(directory), overlay=overlay)
    try:  # a base just uploaded may not have its SHA-256 yet: it is what the end compares
        version_digest_ensure(mount.version)
    except VersionCorrupt as exc:
        raise nbd.NbdError(str(exc)) from exc
    base = nbd.materialise_base(directory=directory, version=mount.version)
    overlay = nbd.create_overlay(
        directory=directory, base=base, base_format=mount.image.file_standard
    )
    pid, port = _listen(mount, directory, overlay)
    return _started(mount_id, pid, port)


def _listen(mount: NetworkMount, directory: Path, overlay: Path) -> tuple[int, int]:
    """Start the server on the mount's port if it had one, else on the first free one."""
    taken = set(
        NetworkMount.objects.filter(state__in=LIVE_MOUNT_STATES, host=mount.host)
        .exclude(pk=mount.pk)
        .exclude(port=None)
        .values_list("port", flat=True)
    )
    ports = [mount.port] if mount.port else []
    ports += [port for port in nbd_ports() if port not in taken and port != mount.port]
    bind = settings.BAAS_NBD_BIND
    for port in ports:
        try:
            pid = nbd.server_start(
                directory=directory,
                overlay=overlay,
                bind=bind,
                port=port,
                export_name=mount.export_name,
                tls_psk=mount.tls_psk,
            )
        except nbd.PortInUse:
            continue
        return pid, port
    raise nbd.NbdError(f"No free port in {settings.BAAS_NBD_PORTS} on {bind}.")


@transaction.atomic
def _started(mount_id: int, pid: int, port: int) -> str:
    mount = _lock_mount(mount_id)
    restarted = mount.ready_at is not None
    moved = restarted and mount.port != port
    mount.pid, mount.port, mount.error, mount.attempts = pid, port, "", 0
    if mount.state == STARTING:
        mount.state = READY
    mount.ready_at = mount.ready_at or timezone.now()
    mount.save(
        update_fields=["pid", "port", "error", "attempts", "state", "ready_at", "updated_at"]
    )
    if mount.state == READY:
        verb = "Served again" if restarted else "Served"
        where = f" on a new port ({port}): the machine must connect again" if moved else ""
        _event(mount, f"{verb}{where}: {_label(mount)} is at {mount_url(mount)}.")
    return "restarted" if restarted else "ready"


@transaction.atomic
def _start_failed(mount_id: int, reason: str, *, counts: bool = True) -> str:
    """Record a failed start; after START_ATTEMPTS counted ones, the mount is given up."""
    mount = _lock_mount(mount_id)
    mount.attempts += 1 if counts else 0
    mount.error = reason
    mount.save(update_fields=["attempts", "error", "updated_at"])
    if mount.state in SERVED and mount.attempts >= START_ATTEMPTS:
        _begin_end(mount, f"The export failed {mount.attempts} times; the last time: {reason}")
        return "given_up"
    _event(mount, f"Could not serve {_label(mount)} (attempt {mount.attempts}): {reason}")
    return "failed"


# --- Ending (a task, on the NBD host) ----------------------------------------------------


def network_mount_finish(*, mount_id: int) -> str:
    """Stop the export, store the changes as the next version, remove the files; idempotent.

    Returns ``stored``, ``unchanged``, ``image_deleted``, ``skipped`` (not
    ending), ``busy`` (its start is still at work; try again soon), or
    ``failed`` (recorded, the files kept; try again).
    """
    mount = NetworkMount.objects.filter(pk=mount_id).first()
    if mount is None or mount.state != ENDING:
        return "skipped"
    try:
        directory = _claim_directory(mount)
        with nbd.mount_lock(directory):
            return _finish_locked(mount_id, directory)
    except nbd.MountBusy:
        return "busy"  # its start is still at work: try again soon
    except (nbd.NbdError, DomainError, OSError) as exc:
        reason = str(exc.detail) if isinstance(exc, DomainError) else str(exc)
        _finish_failed(mount_id, reason)
        return "failed"


def _finish_locked(mount_id: int, directory: Path) -> str:
    mount = NetworkMount.objects.select_related(
        "image", "version", "deployment__machine", "deployment__requested_by", "lease__user"
    ).get(pk=mount_id)
    if mount.state != ENDING:
        return "skipped"
    overlay = directory / nbd.OVERLAY
    nbd.server_stop(pid=mount.pid, overlay=overlay)
    nbd.server_stop(pid=nbd.recorded_pid(directory), overlay=overlay)  # one a crash hid
    if mount.result_version_id is not None:
        outcome = "stored"  # a past run stored it, then failed to clean up
    elif mount.image is None or mount.version is None:
        outcome = "image_deleted"  # refused while the mount is live: only a forced removal
    elif overlay.exists() and nbd.overlay_changed(overlay):
        outcome = _store_changes(mount, mount.image, directory, overlay)
    else:
        outcome = "unchanged"
    nbd.remove_files(directory)
    _ended(mount_id, outcome)
    directory.with_suffix(".lock").unlink(missing_ok=True)
    return outcome


def _store_changes(mount: NetworkMount, image: Image, directory: Path, overlay: Path) -> str:
    standard = image.file_standard
    merged = nbd.merge(directory=directory, overlay=overlay, file_standard=standard)
    with transaction.atomic():
        locked = lock(NetworkMount, mount.pk)
        if locked.result_version_id is None:
            version = _upload(mount, image, merged)
            if version.pk == mount.version_id:
                return "unchanged"  # written over with the same bytes
            locked.result_version = version
            locked.save(update_fields=["result_version", "updated_at"])
    return "stored"


def _upload(mount: NetworkMount, image: Image, merged: Path) -> Version:
    """The merged file through the catalogue's upload path: the next version, the pinned one
    if the bytes are the same, or an error."""
    return version_store_file(
        actor=_uploader(mount, image),
        image=image,
        path=merged,
        note=_note(mount),
        same_as=mount.version,
    )


def _uploader(mount: NetworkMount, image: Image) -> Any:
    """Whose work it is: who deployed it, else the lease holder, else the image's owner."""
    candidates = [mount.deployment.requested_by, mount.lease.user if mount.lease else None]
    for user in candidates:
        if user is not None and can_write_image(user, image):
            return user
    return image.owner


def _note(mount: NetworkMount) -> str:
    lease = f", lease #{mount.lease_id}" if mount.lease_id else ""
    return (
        f"Changes made over the network to v{mount.version_number} by "
        f"{mount.deployment.machine.name} (deployment #{mount.deployment_id}{lease}), "
        "stored when the network mount ended."
    )


@transaction.atomic
def _ended(mount_id: int, outcome: str) -> None:
    mount = _lock_mount(mount_id)
    mount.state = DONE if mount.ready_at else FAILED
    mount.ended_at = timezone.now()
    mount.pid = None
    mount.save(update_fields=["state", "ended_at", "pid", "updated_at"])
    result = mount.result_version
    if result is not None:
        what = f"its changes are version {result.number} (SHA-256 {result.sha256})"
    elif outcome == "image_deleted":
        what = "its image or pinned version was deleted, so its changes were dropped"
    else:
        what = "nothing changed, so no version was made"
    _event(mount, f"Ended {_label(mount)}: {what}. Its export and files are gone.")


@transaction.atomic
def _finish_failed(mount_id: int, reason: str) -> None:
    mount = _lock_mount(mount_id)
    mount.attempts += 1
    mount.error = reason
    mount.save(update_fields=["attempts", "error", "updated_at"])
    _event(
        mount,
        f"Could not end {_label(mount)} (attempt {mount.attempts}): {reason}. "
        "Its overlay is kept, with every change; retrying.",
    )


# --- Its tasks (on the NBD host; declared here, where they are sent) -------------------------


def _may_retry(task: TransactionAwareTask) -> bool:
    """Whether ``task`` has retries left (Celery reads ``max_retries=None`` as no limit)."""
    return task.max_retries is None or task.request.retries < task.max_retries


@shared_task(name="flashing.network_mount_start", base=TransactionAwareTask, **MOUNT_RETRIES)
def network_mount_start_task(self: TransactionAwareTask, mount_id: int) -> str:
    """Serve a network mount over NBD, or serve it again if its server died; retried on failure."""
    outcome = network_mount_start(mount_id=mount_id)
    if outcome == "failed" and _may_retry(self):
        raise self.retry(countdown=MOUNT_RETRY_SECONDS)
    return outcome


@shared_task(name="flashing.network_mount_finish", base=TransactionAwareTask, **MOUNT_RETRIES)
def network_mount_finish_task(self: TransactionAwareTask, mount_id: int) -> str:
    """Stop a network mount's export and store its changes as the next version; retried."""
    outcome = network_mount_finish(mount_id=mount_id)
    if outcome in ("failed", "busy") and _may_retry(self):
        raise self.retry(countdown=MOUNT_RETRY_SECONDS)
    return outcome
