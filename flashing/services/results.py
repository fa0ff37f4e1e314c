"""The agent's result (docs/agent-protocol.md §8): the deployment finished, done or failed.

``done`` is checked against the instructions (what was written, the partition
tables, the versions brought back) before anything is recorded as on the disks;
the agent's other calls are in ``flashing.services.agent``. Like them, it locks
the machine, then the deployment.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from catalogue.models import Version
from flashing.models import Deployment, DeploymentImage, DeploymentState, DiskContent
from flashing.services.agent import agent_locked, agent_log_lines, deployment_walk
from flashing.services.common import Conflict, disk_writes, event_record
from flashing.services.layouts import layout_mismatch, layout_record
from flashing.services.pipeline import deployment_fail

W, S = DeploymentImage.Direction.WRITE, DeploymentImage.Direction.SYNC


def _label(row: DeploymentImage) -> str:
    return f"image {row.image_id} v{row.version_number} on {row.disk}"


def _check_written(deployment: Deployment, written: list[dict[str, Any]]) -> str | None:
    """Why the reported writes do not match the instructions exactly, or None when they do."""
    reported = {
        (str(item.get("image")), item.get("version"), item.get("disk")): item.get("sha256")
        for item in written
    }
    planned = list(disk_writes(deployment).select_related("version"))
    for row in planned:
        key = (str(row.image_id), row.version_number, row.disk)
        if key not in reported:
            return f"the agent did not report {_label(row)}"
        if row.version is None or reported[key] != (row.version.raw_sha256 or row.version.sha256):
            return (
                f"the agent reported SHA-256 {reported[key]} for {_label(row)}, "
                "which is not that version's"
            )
    extra = set(reported) - {(str(row.image_id), row.version_number, row.disk) for row in planned}
    if extra:
        image, version, disk = sorted(extra, key=str)[0]
        return (
            f"the agent reported image {image} v{version} on {disk}, which it was not told to write"
        )
    return None


def _synced_rows(
    principal: Any, deployment: Deployment, synced: list[dict[str, Any]], *, strict: bool
) -> list[tuple[list[DeploymentImage], Version]]:
    """Each reported ``synced`` item's sync rows and the version this agent uploaded for it.

    An image this deployment does not bring back, one it reported no progress
    for, or a version it did not upload is refused (409) when ``strict``, else
    left out: it is never recorded. An item that names its ``disk`` is matched
    against that disk's sync row alone (its progress, the upload's note naming
    that disk); a disk the deployment does not bring the image back from is
    refused likewise. An item without one (an older agent) names an image only:
    when the machine holds it on several disks, all its sync rows are returned,
    and a report for any of them counts.
    """
    found = []
    for item in synced:
        disk = item.get("disk")
        rows = _sync_rows(deployment, item.get("image"), disk)
        version = _uploaded_version(rows, item.get("version"))
        if version and version.note == principal.upload_note(version.image_id, disk):
            found.append((rows, version))
        elif strict:
            raise Conflict(_synced_refusal(item, rows))
    return found


def _synced_refusal(item: dict[str, Any], rows: list[DeploymentImage]) -> str:
    what = f"version {item.get('version')} of image {item.get('image')}"
    if item.get("disk") is not None and not rows:
        return (
            f"The agent reported {what} as brought back from {item['disk']}, which this "
            "deployment does not bring that image back from: nothing was recorded."
        )
    return (
        f"The agent reported {what} as brought back, but it reported no progress bringing it "
        "back or did not upload that version: nothing was recorded."
    )


def _sync_rows(deployment: Deployment, image_id: Any, disk: str | None) -> list[DeploymentImage]:
    """The deployment's sync rows of the image: one per disk that holds it; only ``disk``'s
    when it is named (none when the deployment does not bring the image back from it)."""
    if image_id is None:
        return []
    rows = deployment.images.filter(direction=S, image_id=image_id)
    return list(rows if disk is None else rows.filter(disk=disk))


def _uploaded_version(rows: list[DeploymentImage], number: Any) -> Version | None:
    """Version ``number`` of the rows' image, once the agent has reported progress on one
    of them (a report without a disk lands on one of its rows, whichever disk it was for)."""
    image_id = rows[0].image_id if rows else None
    if image_id is None or number is None or not any(row.progress_at for row in rows):
        return None
    return Version.objects.filter(image_id=image_id, number=number).first()


def _done_refusal(deployment: Deployment) -> str | None:
    """Why ``done`` makes no sense in the deployment's state, or None when it may be checked.

    Done needs the agent to have got on with the work: past ``booting``, and
    progress reported in this attempt for every image it writes.
    """
    if deployment.state == DeploymentState.BOOTING:
        return "it is still booting: the agent reported no progress yet"
    for row in disk_writes(deployment):
        if row.progress_at is None:
            return f"the agent reported no progress writing {_label(row)}"
    return None


def _record_synced(
    deployment: Deployment, synced: list[tuple[list[DeploymentImage], Version]]
) -> None:
    """Note each version brought back; the disk it came from now holds that version.

    That holds until the disk is written over, which the end of the deployment
    settles, after this: ``done`` records what was written there
    (``disk_contents_record``), a failure after writing began forgets what it
    holds (``disk_contents_forget``), and a failure before any write leaves it
    holding what came back, as recorded here.

    A version reported without its disk, of an image the machine holds on several
    disks (an older agent), came from one of them, which one is not known: those
    disks keep their records (the version they were flashed with), so the next
    sync compares them with it and brings back whatever differs. Nothing is
    recorded that may be wrong.
    """
    for rows, version in synced:
        event_record(
            deployment=deployment,
            actor=None,
            action="synced",
            message=f"{' or '.join(row.disk for row in rows)} came back as version "
            f"{version.number} of image {version.image_id} (SHA-256 {version.sha256}).",
        )
        if len(rows) == 1:
            DiskContent.objects.filter(machine=deployment.machine, disk=rows[0].disk).update(
                version=version, version_number=version.number, written_at=timezone.now()
            )


@transaction.atomic
def agent_result(
    *,
    principal: Any,
    state: str,
    written: list[dict[str, Any]],
    synced: list[dict[str, Any]],
    reason: str,
    layouts: list[dict[str, Any]] | None = None,
    lines: list[str] | None = None,
) -> Deployment:
    """Finish the deployment: ``done`` records what is on the disks, ``failed`` the reason.

    ``done`` while it cannot be (still booting, or no progress reported for an
    image to write) or with ``synced`` items this agent did not bring back
    answers 409 and changes nothing (with ``failed``, such items are left out).
    A ``done`` whose writes do not match the instructions exactly (an image
    missing or extra, another SHA-256) is recorded as ``failed``: nothing
    unverified is ever recorded as written, nor a partition table other than
    the setup's (``services.layouts``). ``lines``, the agent's last log lines, are
    kept first, as ``agent_log`` keeps them (and not when the result is refused).
    """
    deployment = agent_locked(principal)
    agent_log_lines(deployment, lines or [])
    done = state == DeploymentState.DONE
    if done and (refusal := _done_refusal(deployment)):
        raise Conflict(f"Deployment #{deployment.pk} cannot be done: {refusal}.")
    _record_synced(deployment, _synced_rows(principal, deployment, synced, strict=done))
    if done:
        mismatch = _check_written(deployment, written) or layout_mismatch(deployment, layouts or [])
        if mismatch is None:
            layout_record(deployment, layouts or [])
            deployment.images.filter(direction=W).update(bytes_done=F("bytes_total"), phase="done")
            deployment = deployment_walk(
                deployment, DeploymentState.DONE, "The agent reported success."
            )
            if deployment.state == DeploymentState.DONE:
                return deployment  # its tokens died and the machine moved on (states._finish)
            mismatch = f"the deployment could not go from {deployment.state} to done"
        reason = f"The agent reported success, but {mismatch}."
    return deployment_fail(
        actor=None, deployment=deployment, reason=reason or "The agent reported a failure."
    )
