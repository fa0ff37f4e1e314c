"""The promises of the lifecycle model, checked on the database and the disk after every step.

Each check raises ``AssertionError`` with a sentence that names the promise and the rows
that break it. The checks that need to see a request (who got a boot script, a token,
image bytes) live with the rules of ``test_lifecycle_model``; these look at the state.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import zstandard
from hypothesis import event

from accounts.models import AuditEvent
from catalogue.models import ResumableUpload, UploadState, Version
from catalogue.selectors.usage import user_storage_used
from catalogue.services.datamaps import version_map
from catalogue.services.processing import storage_audit
from catalogue.storage import get_storage
from diskimage.seekable import read_seek_table, zero_frame
from diskimage.verify import Verifier
from flashing.models import (
    FINAL_STATES,
    LIVE_MOUNT_STATES,
    RUNNING_STATES,
    Deployment,
    DeploymentEvent,
    DeploymentImage,
    DeploymentKind,
    DeploymentState,
    DiskContent,
    NetworkMount,
)

# Promises not to check, comma-separated (BAAS_MODEL_IGNORE=dead-token,numbering): to
# look for the failures that a first, frequent one would hide.
# BAAS_MODEL_ONLY=<name> checks that one alone (to shrink its failing sequence).
IGNORED = set(os.environ.get("BAAS_MODEL_IGNORE", "").split(","))
ONLY = os.environ.get("BAAS_MODEL_ONLY", "")
HTML = re.compile(r"<\s*(!doctype|html|head|body|pre|div|table|title)\b", re.IGNORECASE)


def promise(name: str, kept: object, message: str) -> None:
    """Check the promise ``name``; an ``AssertionError`` that names it when it is broken."""
    if name not in IGNORED and ONLY in ("", name):
        assert kept, f"[{name}] {message}"


SEEN: Counter[str] = Counter()
# ``BAAS_MODEL_TRACE=FILE`` writes each request and what each example reached, ids and
# UUIDs masked: two runs of the ci examples compare line by line (``diff``), which shows
# where a run that drew other examples first went another way.
TRACE = os.environ.get("BAAS_MODEL_TRACE", "")
MASKED = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+")


def trace(line: str) -> None:
    if TRACE:
        with open(TRACE, "a") as out:
            out.write(MASKED.sub("#", line) + "\n")


def seen(what: str) -> None:
    """Note that an example reached ``what`` (printed by the test: is the model deep enough?)."""
    event(what)
    trace(f"seen: {what}")
    SEEN[what] += 1


def plain(text: str) -> bool:
    """A reason a person can read: words, not a web page or a Python traceback."""
    return not HTML.search(text) and "Traceback (most recent call last)" not in text


def deployment_is_legitimate(deployment: Deployment, admin_requested: set[int]) -> bool:
    """Whether an unfinished deployment may still go on.

    It belongs to a live lease of the person who asked for it; or it has no lease and
    BAAS queued it (a reset) or an administrator asked for it on a machine they do not
    hold. Those run until they finish or someone cancels them: a lease that ends cancels
    only its own deployments (the model's decision for administrators, see the module
    docstring of ``test_lifecycle_model``).
    """
    lease = deployment.lease
    if lease is None:
        return deployment.kind == DeploymentKind.RESET or deployment.pk in admin_requested
    return lease.ended_at is None and lease.user_id == deployment.requested_by_id


def check_one_running_per_machine() -> None:
    running: dict[int, list[int]] = defaultdict(list)
    for pk, machine_id in Deployment.objects.filter(state__in=RUNNING_STATES).values_list(
        "pk", "machine_id"
    ):
        running[machine_id].append(pk)
    crowded = {machine: pks for machine, pks in running.items() if len(pks) > 1}
    promise(
        "one-running", not crowded, f"More than one deployment past queued on a machine: {crowded}"
    )


def check_deployments_finished_or_leased(admin_requested: set[int]) -> None:
    unfinished = Deployment.objects.exclude(state__in=FINAL_STATES).select_related("lease")
    orphans = [
        f"#{d.pk} ({d.state}, lease #{d.lease_id} ended {d.lease.ended_at if d.lease else '-'})"
        for d in unfinished
        if not deployment_is_legitimate(d, admin_requested)
    ]
    promise(
        "finished-or-leased",
        not orphans,
        f"Unfinished deployments whose lease is over: {', '.join(orphans)}",
    )


def check_reasons_are_plain() -> None:
    for deployment in Deployment.objects.filter(state__in=FINAL_STATES):
        reason = deployment.failure_reason
        if deployment.state == DeploymentState.FAILED:
            promise(
                "plain-reasons",
                reason.strip(),
                f"Deployment #{deployment.pk} failed without a reason.",
            )
        if deployment.state != DeploymentState.DONE:
            last = deployment.events.filter(action=deployment.state).order_by("-id").first()
            promise(
                "plain-reasons",
                last is not None and last.message.strip(),
                f"Deployment #{deployment.pk} is {deployment.state} without saying why.",
            )
        promise(
            "plain-reasons",
            plain(reason),
            f"Deployment #{deployment.pk}'s reason is not plain: {reason[:300]}",
        )
    for logged in DeploymentEvent.objects.all():
        promise(
            "plain-reasons",
            plain(logged.message),
            f"Event {logged.action} of deployment #{logged.deployment_id} is not plain text: "
            f"{logged.message[:300]}",
        )


def check_pinned_versions_kept() -> None:
    """Versions an unfinished deployment writes or mounts, or a live mount serves, exist."""
    rows = DeploymentImage.objects.exclude(deployment__state__in=FINAL_STATES).exclude(
        direction=DeploymentImage.Direction.SYNC
    )
    pinned = [(r.image_id, r.version_number, f"deployment #{r.deployment_id}") for r in rows]
    mounts = NetworkMount.objects.filter(state__in=LIVE_MOUNT_STATES)
    pinned += [(m.image_id, m.version_number, f"network mount #{m.pk}") for m in mounts]
    storage = get_storage()
    for image_id, number, holder in pinned:
        version = Version.objects.filter(image_id=image_id, number=number).first()
        promise(
            "pinned-kept",
            image_id is not None and version is not None,
            f"Version {number} of image {image_id}, pinned by {holder}, was deleted.",
        )
        path = storage.version_path(image_id, number, version.stored_compression)
        promise(
            "pinned-kept",
            path.exists(),
            f"The file of {image_id} v{number}, pinned by {holder}, is gone.",
        )


def check_numbering() -> None:
    """Each image's uploads are numbered 1, 2, 3… (0 is the first version): none skipped."""
    numbers: dict[str, list[int]] = defaultdict(list)
    events = AuditEvent.objects.filter(action="version.upload").order_by("id")
    for data in events.values_list("data", flat=True):
        numbers[data["image"]].append(data["number"])
    for image, seen in numbers.items():
        expected = list(range(1, len(seen) + 1))
        promise(
            "numbering",
            seen == expected,
            f"Image {image}'s new versions were numbered {seen}: skipped.",
        )


def check_files_match_rows(strays: Iterable[Path] = ()) -> None:
    """Every version has its file; every file under the root is a version's (or beside one).

    ``strays`` are files the model left on purpose (a crash during an upload); they
    are allowed as long as no row claims their number with other bytes. The
    comparison itself is the catalogue's own (``processing.storage_audit``).
    """
    root = Path(get_storage().root)
    allowed = {f"{path.parent.name}/{path.name}" for path in strays}
    # An unfinished resumable upload's bytes are a .part its row owns (check_resumable_uploads).
    receiving = ResumableUpload.objects.filter(state=UploadState.RECEIVING)
    allowed |= {
        f"{image}/.upload-{token}.part" for image, token in receiving.values_list("image", "token")
    }
    audit = storage_audit()
    for image, number, name in audit.missing_files:
        promise(
            "files-match-rows", False, f"Version {number} of image {image} has no file ({name})."
        )
    for part in audit.parts:
        if part not in allowed:
            promise("files-match-rows", False, f"A leftover upload file: {root / part}")
    for stray in audit.stray_files:
        if stray not in allowed and stray not in audit.parts:
            promise("files-match-rows", False, f"A file without its version row: {root / stray}")


def check_resumable_uploads() -> None:
    """An unfinished resumable upload's bytes are on disk, as many as it acknowledged, and
    count in its image owner's quota; a finished one (complete, expired, failed) or an
    abandoned one (no row) leaves no bytes and counts for nothing."""
    storage = get_storage()
    for upload in ResumableUpload.objects.all():
        part = storage.resumable_part(upload.image_id, upload.token).path
        if upload.state == UploadState.RECEIVING:
            size = part.stat().st_size if part.exists() else None
            # Kept as sent, the file is the bytes acknowledged; decoded as they arrive, it is
            # the raw image up to where the checkpoint at the acknowledged offset had written.
            expected = upload.offset if upload.decoded is None else upload.decoded.get("written")
            promise(
                "resumable-bytes",
                size == expected or (size is None and not expected),
                f"Upload {upload.token} acknowledged {upload.offset} bytes (decoded: "
                f"{upload.decoded is not None}, {expected} expected in its file); its file has "
                f"{size}.",
            )
            on_disk = part.stat().st_blocks * 512 if part.exists() else 0
            promise(
                "resumable-quota",
                upload.stored == on_disk,
                f"Upload {upload.token} counts {upload.stored} bytes in the quota; it takes "
                f"{on_disk} on disk.",
            )
        else:
            promise(
                "resumable-bytes",
                not part.exists() and upload.stored == 0,
                f"Upload {upload.token} is {upload.state} but its bytes are still there.",
            )
        if upload.state == UploadState.COMPLETE:
            promise(
                "resumable-bytes",
                upload.version_id is None or Version.objects.filter(pk=upload.version_id).exists(),
                f"Upload {upload.token} is complete without its version.",
            )
    tokens = set(ResumableUpload.objects.filter(state=UploadState.RECEIVING).values_list("token"))
    for path in Path(storage.root).glob("*/.upload-*.part"):
        token = path.name[len(".upload-") : -len(".part")]
        promise("resumable-bytes", (token,) in tokens, f"Bytes of no unfinished upload: {path}")
    owners = {
        upload.image.owner for upload in ResumableUpload.objects.select_related("image__owner")
    }
    for owner in owners:
        versions = sum(
            Version.objects.filter(image__owner=owner).values_list("stored_size", flat=True)
        )
        unfinished = sum(
            ResumableUpload.objects.filter(
                image__owner=owner, state=UploadState.RECEIVING
            ).values_list("stored", flat=True)
        )
        promise(
            "resumable-quota",
            user_storage_used(user=owner) == versions + unfinished,
            f"{owner.username}'s usage leaves out or double-counts unfinished uploads.",
        )


def partition_of(path: str, disk: str) -> bool:
    """``path`` is Linux's name of a partition of ``disk`` (/dev/sda2, /dev/nvme0n1p2)."""
    rest = path[len(disk) :] if path.startswith(disk) else ""
    return re.fullmatch(r"p\d+" if disk[-1:].isdigit() else r"\d+", rest) is not None


def check_disk_records_nest() -> None:
    """``disk-records-nest``: what a machine's disks hold is recorded once per place: a
    partition's record and its whole disk's come from the same deployment, or one of them
    was forgotten when the other was written (a later sync never reads another image)."""
    rows = list(DiskContent.objects.all())
    for row in rows:
        for other in rows:
            if other.machine_id == row.machine_id and partition_of(row.disk, other.disk):
                promise(
                    "disk-records-nest",
                    row.deployment_id == other.deployment_id,
                    f"{row.disk} is recorded from deployment #{row.deployment_id}, its whole "
                    f"disk {other.disk} from #{other.deployment_id}: one of them is untrue.",
                )


def check_versions_read_back() -> None:
    """Every stored version reads back its own SHA-256, whatever was deleted or pruned before.

    Where the filesystem has reflinks, versions share their unchanged blocks
    (``catalogue.services.sharing``): deleting or pruning one must leave every other
    byte-identical. Checked through each version's data map, whose SHA-256 is the
    version's: a raw file range by range and zeros elsewhere (holes are not read); a
    zstd file frame by frame, its zero frames byte for byte as written. A gzip file, a
    version without its SHA-256 or map yet, a damaged one, or one whose file is gone
    (``files-match-rows`` says so) is not read.
    """
    storage = get_storage()
    for version in Version.objects.exclude(sha256="").filter(damaged=""):
        reason = _read_back(storage, version)
        promise(
            "versions-read-back",
            reason is None,
            f"Version {version.number} of image {version.image_id} no longer reads back its "
            f"SHA-256: {reason}.",
        )
        seen("a version read back")


def _read_back(storage, version: Version) -> str | None:
    datamap = version_map(version)
    if datamap is None or datamap.sha256 != version.sha256:
        return None  # (not mapped yet: nothing to read it against)
    compression = version.stored_compression
    path = storage.version_file(version.image_id, version.number, compression)
    if path is None:
        return None
    if compression == "none":
        with Verifier(path, datamap, workers=1, sparse=True) as verifier:
            verifier.check_gaps()
            return verifier.result()
    if compression != "zstd":
        return None
    with path.open("rb") as file:
        frames = read_seek_table(file.fileno())
        if frames is None:
            return None  # stored as uploaded, not in frames yet
        ranges = {start: (end, digest) for start, end, digest in datamap.ranges}
        for frame in frames:
            payload = os.pread(file.fileno(), frame.length, frame.offset)
            if frame.start in ranges and frame.size:
                end, digest = ranges[frame.start]
                data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=frame.size)
                if hashlib.sha256(data).hexdigest() != digest:
                    return f"the frame of bytes {frame.start}-{end} differs"
            elif frame.size and payload != zero_frame(frame.size):
                return f"the zero frame at byte {frame.start} is not one"
    return None
