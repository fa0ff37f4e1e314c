"""The promises about what BAAS records on a machine's disks, and the deltas it offers.

* ``delta-from-record``: a write instruction carries a ``delta`` only from the
  version recorded on that very disk (``DiskContent``), never from the version it
  writes, and never from a disk whose record was forgotten;
* ``delta-is-the-difference``: a disk holding the recorded version, with the delta's
  ranges and blocks (``parts``) written and its runs zeroed, holds the version the
  instruction writes byte for byte — what a delta keeps, the two versions share —
  and each part's digest is that of the new version's blocks;
* ``disk-records``: once a deployment is done, each disk it wrote is recorded as
  holding the version it wrote (a delta re-flash included: the disk holds the new
  version); once one fails after it began writing, what its disks hold is forgotten (a
  written disk's partitions and a written partition's whole disk too);
  a disk brought back (the agent names it) and not written over, nor on a disk the
  deployment wrote or partitioned, is recorded as holding the version it came back as —
  every disk brought back, when the deployment failed before it began writing.
"""

from __future__ import annotations

from typing import Any

from catalogue.models import Version
from catalogue.services.codecs import raw_reader
from catalogue.services.datamaps import version_map
from catalogue.storage import get_storage
from diskimage import CHUNK
from diskimage.sparsedelta import block_hashes, hashes_digest
from flashing.models import Deployment, DeploymentState, DiskContent
from tests.integrity.invariants import partition_of, promise, seen


def stored_bytes(version: Version) -> bytes:
    """A version's raw bytes, decoded as stored (a small one: the model's)."""
    compression = version.stored_compression
    stored = get_storage().open_read(version.image_id, version.number, compression)
    with raw_reader(stored, compression) as raw:
        data = b"".join(iter(lambda: raw.read(CHUNK), b""))
    return data + bytes(version.size - len(data))


def check_deltas(deployment_id: int, instructions: dict[str, Any]) -> None:
    """Every delta of the instructions names what is recorded on its disk."""
    machine_id = Deployment.objects.get(pk=deployment_id).machine_id
    for entry in instructions["write"]:
        delta = entry.get("delta")
        if delta is None:
            continue
        seen("an instruction carried a delta")
        record = DiskContent.objects.filter(machine_id=machine_id, disk=entry["disk"]).first()
        recorded = (str(record.image_id), record.version_number) if record else None
        promise(
            "delta-from-record",
            recorded == (delta["image"], delta["version"]),
            f"The write of image {entry['image']} v{entry['version']} on {entry['disk']} "
            f"carries a delta from image {delta['image']} v{delta['version']}, but the disk "
            f"is recorded as holding {recorded or 'nothing known'}.",
        )
        promise(
            "delta-from-record",
            (delta["image"], delta["version"]) != (entry["image"], entry["version"]),
            f"The write of image {entry['image']} v{entry['version']} carries a delta from itself.",
        )
        check_difference(entry, delta)


def check_difference(entry: dict[str, Any], delta: dict[str, Any]) -> None:
    """The recorded version with the delta applied is the version written (raw ones)."""
    base = Version.objects.get(image_id=delta["image"], number=delta["version"])
    new = Version.objects.get(image_id=entry["image"], number=entry["version"])
    datamap = version_map(new)
    if datamap is None or {base.stored_compression, new.stored_compression} != {"none"}:
        return
    before, after = stored_bytes(base), stored_bytes(new)
    disk = bytearray(before)
    for index, _, _ in delta["ranges"]:
        start, end, _ = datamap.ranges[index]
        disk[start:end] = after[start:end]
    for _, start, end, digest in delta.get("parts", []):
        promise(
            "delta-is-the-difference",
            digest == hashes_digest(block_hashes(after[start:end])),
            f"The delta to image {entry['image']} v{entry['version']} sends bytes "
            f"{start}-{end} with a digest that is not theirs.",
        )
        disk[start:end] = after[start:end]
        seen("a delta sent some blocks of a range")
    for start, end in delta["zeros"]:
        disk[start:end] = bytes(end - start)
    promise(
        "delta-is-the-difference",
        bytes(disk) == after,
        f"A disk holding v{base.number} with the delta applied is not v{new.number} of image "
        f"{entry['image']}: the delta keeps bytes the two versions do not share.",
    )


def check_records_after(deployment_id: int, writes: list[dict[str, Any]]) -> None:
    """After the agent's result: the written disks are recorded (done) or forgotten (failed)."""
    deployment = Deployment.objects.get(pk=deployment_id)
    records = {
        c.disk: (str(c.image_id), c.version_number)
        for c in DiskContent.objects.filter(machine_id=deployment.machine_id)
    }
    began_writing = deployment.events.filter(action=DeploymentState.WRITING).exists()
    for entry in writes:
        disk = entry["disk"]
        if deployment.state == DeploymentState.DONE:
            promise(
                "disk-records",
                records.get(disk) == (entry["image"], entry["version"]),
                f"Deployment #{deployment_id} is done, but {disk} is recorded as holding "
                f"{records.get(disk)}, not image {entry['image']} v{entry['version']}"
                f"{' (written by a delta)' if entry.get('delta') else ''}.",
            )
        elif deployment.state == DeploymentState.FAILED and began_writing:
            # The disk, its partitions, the whole disk of a partition: none holds its record.
            stale = [
                d for d in records if d == disk or partition_of(d, disk) or partition_of(disk, d)
            ]
            promise(
                "disk-records",
                not stale,
                f"Deployment #{deployment_id} failed while writing {disk}, yet "
                f"{', '.join(f'{d} is still recorded as holding {records[d]}' for d in stale)}.",
            )
            seen("a failed flash forgot its disks")


def check_synced_records(
    deployment_id: int, instructions: dict[str, Any], synced: list[dict[str, Any]]
) -> None:
    """After the agent's result: each disk brought back (its ``synced`` item names it) that
    the deployment left alone is recorded as holding the version it came back as, exactly,
    even when the machine holds the image on another disk too. A deployment that failed
    before it began writing left every disk alone, those it was to write too."""
    deployment = Deployment.objects.get(pk=deployment_id)
    began_writing = deployment.events.filter(action=DeploymentState.WRITING).exists()
    if deployment.state == DeploymentState.DONE or began_writing:
        touched = [e["disk"] for e in instructions["write"]]
        touched += [t["disk"] for t in instructions.get("layouts") or []]
    elif deployment.state == DeploymentState.FAILED:
        touched = []
    else:
        return
    for item in synced:
        disk = item["disk"]
        if any(disk == t or partition_of(disk, t) or partition_of(t, disk) for t in touched):
            continue  # written over, or its disk's partitions were: disk-records says what
        record = DiskContent.objects.filter(machine_id=deployment.machine_id, disk=disk).first()
        recorded = (str(record.image_id), record.version_number) if record else None
        promise(
            "disk-records",
            recorded == (item["image"], item["version"]),
            f"Deployment #{deployment_id} ({deployment.state}) brought {disk} back as image "
            f"{item['image']} v{item['version']}, but the disk is recorded as holding {recorded}.",
        )
        seen("a disk brought back is recorded as holding its version")
        if not began_writing and disk in [e["disk"] for e in instructions["write"]]:
            seen("a disk brought back, then not written, holds what came back")
