"""The agent's calls (docs/agent-protocol.md): check in, instructions, progress, log.

Every call is made by an ``AgentPrincipal`` (flashing.authentication) bound to
one deployment; every call that changes something locks the machine, then the
deployment (``agent_locked``), like the other deployment services. The last
call, the result, is ``flashing.services.results``'.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from baas_site.text import plain_text
from catalogue.interface import (
    RenditionFailed,
    VersionCorrupt,
    version_digest_ensure,
    version_raw_ensure,
    version_stored_size,
    version_written_map,
)
from catalogue.models import Compression, FileStandard, ImageType, Version
from flashing.exceptions import AgentNotAuthenticated, DeploymentOver, InvalidInput, NotYours
from flashing.models import (
    FINAL_STATES,
    RUNNING_STATES,
    AgentTokenKind,
    Deployment,
    DeploymentEvent,
    DeploymentImage,
    DeploymentState,
    normalize_mac,
)
from flashing.services.boot import refusal_record
from flashing.services.common import Conflict, disk_writes, event_record, lock, lock_machine
from flashing.services.deltas import delta_entry
from flashing.services.layouts import layout_instructions
from flashing.services.mount_urls import mount_entries
from flashing.services.pipeline import deployment_fail
from flashing.services.states import TRANSITIONS, deployment_set_state
from flashing.services.tokens import token_consume, token_mint

W, S = DeploymentImage.Direction.WRITE, DeploymentImage.Direction.SYNC
MAX_LOG_LINES = 500
MAX_LINE = 2000
# 64 zeros: no disk hashes to it, so a sync whose flashed version is gone always uploads.
UNKNOWN_SHA256 = "0" * 64
# A write entry carries its version's data map (the agent's first need) up to this many
# ranges (~150 bytes each in JSON); a larger one is fetched from map_url.
INLINE_MAP_RANGES = 4096


def agent_locked(principal: Any) -> Deployment:
    """The principal's deployment, machine then deployment locked.

    410 once the deployment is over; 401 once a newer attempt began.
    """
    deployment = principal.deployment
    lock_machine(deployment.machine)
    deployment = lock(Deployment, deployment.pk)
    if deployment.state in FINAL_STATES:
        raise DeploymentOver.of(deployment)
    if deployment.state not in RUNNING_STATES or deployment.attempt != principal.token.attempt:
        raise AgentNotAuthenticated(f"Deployment #{deployment.pk} is over for this agent.")
    return deployment


# --- Check-in --------------------------------------------------------------------------------


class CheckinRefused(Conflict):
    """409: the attempt is bound to the agent that checked in first."""


def agent_checkin(
    *, principal: Any, mac: str, agent_version: str, address: str | None = None
) -> tuple[str, Deployment]:
    """Exchange the attempt's one-time boot token for an agent token bound to the deployment.

    The first check-in binds the attempt to that agent. Any further check-in
    for the attempt (the same boot token again) answers 409 and is recorded on
    the deployment's event log and in the audit log, with the caller's
    ``address`` (boundedly: ``refusal_record``); nothing else changes. 401
    for a token that is not a live boot token; 403 when the MAC is not the
    deployment's machine's (recorded the same way: the boot token was good).
    """
    try:
        return _checkin(principal, mac, agent_version, address)
    except (CheckinRefused, NotYours) as exc:
        what = "A second check-in" if isinstance(exc, CheckinRefused) else "A check-in"
        refusal_record(
            deployment=principal.deployment,
            action="checkin_refused",
            message=f"{what} for attempt {principal.token.attempt} from "
            f"{address or 'an unknown address'} (MAC {mac[:40]}) was refused: {exc.detail}",
            address=address,
            mac=mac[:40],
        )
        raise


@transaction.atomic
def _checkin(
    principal: Any, mac: str, agent_version: str, address: str | None
) -> tuple[str, Deployment]:
    if principal.kind != AgentTokenKind.BOOT:
        raise AgentNotAuthenticated("Check in with the one-time boot token.")
    deployment = agent_locked(principal)
    macs = set(deployment.machine.mac_addresses.values_list("address", flat=True))
    try:
        mac = normalize_mac(mac)
    except Exception:
        raise InvalidInput({"mac": [f"'{mac}' is not a MAC address."]}) from None
    if mac not in macs:
        raise NotYours(f"{mac} is not a MAC address of {deployment.machine.name}.")
    if deployment.checked_in_at is not None or not token_consume(token=principal.token):
        raise CheckinRefused(
            f"attempt {deployment.attempt} of deployment #{deployment.pk} is bound to the agent "
            "that checked in first; ask for a manual boot to start a new attempt."
        )
    secret = token_mint(deployment=deployment, kind=AgentTokenKind.AGENT)
    now = timezone.now()
    deployment.checked_in_at = deployment.heartbeat_at = now
    deployment.save(update_fields=["checked_in_at", "heartbeat_at", "updated_at"])
    event_record(
        deployment=deployment,
        actor=None,
        action="checked_in",
        message=f"Agent {agent_version or '?'} checked in from {mac} at "
        f"{address or 'an unknown address'}: attempt {deployment.attempt} is bound to it.",
        address=address,
    )
    return secret, deployment


# --- Instructions --------------------------------------------------------------------


def _sync_entry(row: DeploymentImage) -> dict[str, Any]:
    version = row.version
    # Known bytes (their SHA-256 is in): the agent may send only the changes against them
    # (a raw image's: a qcow2 image takes whole qcow2 files only).
    known = version if version is not None and version.sha256 else None
    delta = (
        known is not None and row.image is not None and row.image.file_standard == FileStandard.RAW
    )
    return {
        "image": str(row.image_id),
        "disk": row.disk,
        "version": row.version_number,
        "size": version.size if version else row.bytes_total,
        "sha256": known.sha256 if known else UNKNOWN_SHA256,
        "upload_url": f"/api/image/{row.image_id}",
        **({"map_url": _map_url(known)} if known else {}),
        **({"hashes_url": _map_url(known)[: -len("map")] + "hashes"} if known and delta else {}),
    }


def _write_entry(row: DeploymentImage) -> dict[str, Any]:
    version = row.version
    deleted = f"Version {row.version_number} of an image of this setup was deleted."
    if version is None or row.image_id is None:
        raise Conflict(deleted)
    if version.damaged:
        raise Conflict(f"Image {version.image_id} v{version.number} is damaged: {version.damaged}")
    try:  # computed before the start, unless the deployment was started another way
        version_digest_ensure(version)
        version_raw_ensure(version)  # a qcow2 version: the disk it describes is written
    except Version.DoesNotExist as exc:
        raise Conflict(deleted) from exc
    except VersionCorrupt as exc:
        raise Conflict(str(exc)) from exc
    except RenditionFailed as exc:
        raise Conflict(str(exc.detail)) from exc
    raw = "?format=raw" if version.raw_sha256 else ""
    delta = delta_entry(row=row, version=version)
    return {
        "image": str(row.image_id),
        "version": version.number,
        "disk": row.disk,
        "url": f"/api/image/{row.image_id}/{version.number}{raw}",
        "size": version.virtual_size if raw else version.size,
        "stored_size": version.virtual_size if raw else version_stored_size(version),
        "sha256": version.raw_sha256 or version.sha256,
        "compression": Compression.NONE if raw else version.stored_compression,
        "map_url": _map_url(version) + raw,
        **({"map": datamap} if (datamap := _inline_map(version)) is not None else {}),
        "data_url": f"/api/image/{version.image_id}/{version.number}/data{raw}",
        **({"delta": delta} if delta is not None else {}),
    }


def _inline_map(version: Version) -> dict[str, Any] | None:
    """What ``map_url`` answers, for the instruction itself: the agent's first call saved
    (None when there is no such map yet, or it is too large to inline)."""
    datamap = version_written_map(version)
    if datamap is None or not datamap.sha256 or len(datamap.ranges) > INLINE_MAP_RANGES:
        return None
    return datamap.as_json()


def _map_url(version: Version) -> str:
    """Where the version's data map is (diskimage.datamap): the agent verifies only data."""
    return f"/api/image/{version.image_id}/{version.number}/map"


def _write_order(row: DeploymentImage) -> bool:
    # A custom init image goes last: a system image on the disk that holds its
    # partition (/dev/sda around /dev/sda3) would overwrite it otherwise.
    return row.image is not None and row.image.type == ImageType.CUSTOM_INIT


def agent_instructions(*, principal: Any) -> dict[str, Any]:
    """The images to bring back (in order), then those to write; a deleted version fails it.

    A boot image is not written (it is served over the network, not put on a disk).
    """
    deployment = principal.deployment
    try:
        return _instructions(deployment)
    except Conflict as exc:
        deployment_fail(actor=None, deployment=deployment, reason=str(exc.detail))
        raise


def agent_checkin_instructions(*, principal: Any) -> dict[str, Any] | None:
    """The instructions for the check-in's answer (one call less for the agent), or None
    when they cannot be given: the agent then asks for them, and that call fails the
    deployment and says why, as :func:`agent_instructions` does."""
    try:
        return _instructions(principal.deployment)
    except Conflict:
        return None


def _instructions(deployment: Deployment) -> dict[str, Any]:
    rows = list(deployment.images.select_related("version", "image").order_by("id"))
    writes = sorted(disk_writes(deployment).select_related("version", "image"), key=_write_order)
    return {
        "deployment": deployment.pk,
        "sync": [_sync_entry(row) for row in rows if row.direction == S and row.image_id],
        "write": [_write_entry(row) for row in writes],
        "mounts": mount_entries(deployment=deployment),
        "layouts": layout_instructions(deployment),
    }


# --- Progress ------------------------------------------------------------------------

RANK: dict[str, int] = {
    DeploymentState.BOOTING: 0,
    DeploymentState.SYNCING: 1,
    DeploymentState.WRITING: 2,
    DeploymentState.VERIFYING: 3,
}


def _row_for(deployment: Deployment, image: str, phase: str, disk: str | None) -> DeploymentImage:
    """The progress row: sync rows while bringing back, write rows afterwards.

    A report that names its ``disk`` is about bringing that disk back: it lands
    on that sync row, and is refused (409) unless the deployment brings the image
    back from that disk. Without a disk (an older agent), an image both brought
    back and written is ambiguous while verifying (the agent hashes either way);
    before the deployment reaches ``writing`` the sync row is meant.
    """
    if disk is not None:
        return _named_sync_row(deployment, image, phase, disk)
    rows = {row.direction: row for row in deployment.images.filter(image_id=image)}
    rows.pop(DeploymentImage.Direction.MOUNT, None)  # served over the network, not by the agent
    if W in rows and not disk_writes(deployment).filter(pk=rows[W].pk).exists():
        del rows[W]  # a boot image: served over the network too
    if not rows:
        raise InvalidInput(
            {"image": [f"Image {image} is not one this deployment writes or brings back."]}
        )
    before_writing = RANK.get(deployment.state, 0) < RANK[DeploymentState.WRITING]
    wants_sync = phase == "syncing" or (phase == "verifying" and before_writing)
    return rows.get(S if wants_sync else W) or next(iter(rows.values()))


def _named_sync_row(deployment: Deployment, image: str, phase: str, disk: str) -> DeploymentImage:
    """The sync row of ``image`` on ``disk``. The agent token proves the deployment, not
    the disk: a disk the deployment does not bring the image back from is refused."""
    if phase == "writing":
        raise InvalidInput({"disk": ["Only a report about bringing a disk back names its disk."]})
    row = deployment.images.filter(direction=S, image_id=image, disk=disk).first()
    if row is None:
        raise Conflict(
            f"Deployment #{deployment.pk} does not bring image {image} back from {disk}: "
            "nothing was recorded."
        )
    return row


def deployment_walk(deployment: Deployment, target: str, message: str = "") -> Deployment:
    """Move forward to ``target`` through the allowed transitions; never backwards."""
    for _ in range(4):
        if deployment.state == target:
            break
        allowed = TRANSITIONS.get(deployment.state, ())
        if target in allowed:
            step = target
        elif DeploymentState.WRITING in allowed and target in (
            DeploymentState.VERIFYING,
            DeploymentState.DONE,
        ):
            step = DeploymentState.WRITING
        elif DeploymentState.VERIFYING in allowed and target == DeploymentState.DONE:
            step = DeploymentState.VERIFYING
        else:
            break
        deployment = deployment_set_state(
            actor=None, deployment=deployment, state=step, message=message if step == target else ""
        )
    return deployment


def _target_state(row: DeploymentImage, phase: str) -> str:
    if row.direction == S:
        return DeploymentState.SYNCING
    return DeploymentState.VERIFYING if phase == "verifying" else DeploymentState.WRITING


def _update_row(row: DeploymentImage, phase: str, done: int, total: int, now: datetime) -> None:
    if row.progress_at is not None and row.phase == phase and done >= row.bytes_done:
        seconds = (now - row.progress_at).total_seconds()
        if seconds > 0:
            row.rate = (done - row.bytes_done) / seconds
    else:
        row.rate = 0.0
    row.phase, row.bytes_done, row.progress_at = phase, done, now
    row.bytes_total = total or row.bytes_total
    row.save(update_fields=["phase", "bytes_done", "bytes_total", "rate", "progress_at"])


@transaction.atomic
def agent_progress(
    *,
    principal: Any,
    image: str,
    phase: str,
    bytes_done: int,
    bytes_total: int,
    disk: str | None = None,
) -> DeploymentImage:
    """Record an image's bytes done and the rate; move the deployment's state along.

    ``disk``: the disk a report about bringing an image back is for (``_row_for``).
    """
    deployment = agent_locked(principal)
    row = _row_for(deployment, image, phase, disk)
    now = timezone.now()
    _update_row(row, phase, bytes_done, bytes_total, now)
    deployment.heartbeat_at = now
    deployment.save(update_fields=["heartbeat_at", "updated_at"])
    target = _target_state(row, phase)
    if RANK[target] >= RANK.get(deployment.state, 0) or target == DeploymentState.WRITING:
        deployment_walk(deployment, target)
    return row


# --- Log -----------------------------------------------------------------------------


@transaction.atomic
def agent_log(*, principal: Any, lines: list[str]) -> int:
    """Keep the agent's log lines in the deployment's event log (``action=agent``)."""
    deployment = agent_locked(principal)
    deployment.heartbeat_at = timezone.now()
    deployment.save(update_fields=["heartbeat_at", "updated_at"])
    return agent_log_lines(deployment, lines)


def agent_log_lines(deployment: Deployment, lines: list[str]) -> int:
    """Keep ``lines`` (at most ``MAX_LOG_LINES``, each cut to ``MAX_LINE``); how many were kept."""
    events = [
        DeploymentEvent(
            deployment=deployment,
            action="agent",
            state=deployment.state,
            message=plain_text(line, MAX_LINE),
        )
        for line in lines[:MAX_LOG_LINES]
    ]
    DeploymentEvent.objects.bulk_create(events)
    return len(events)
