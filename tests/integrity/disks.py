"""The promises about what BAAS records on a machine's disks, and the deltas it offers.

* ``delta-from-record``: a write instruction carries a ``delta`` only from the
  version recorded on that very disk (``DiskContent``), never from the version it
  writes, and never from a disk whose record was forgotten;
* ``disk-records``: once a deployment is done, each disk it wrote is recorded as
  holding the version it wrote (a delta re-flash included: the disk holds the new
  version); once one fails after it began writing, what its disks hold is forgotten.
"""

from __future__ import annotations

from typing import Any

from flashing.models import Deployment, DeploymentState, DiskContent
from tests.integrity.invariants import promise, seen


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
            promise(
                "disk-records",
                disk not in records,
                f"Deployment #{deployment_id} failed while writing {disk}, which is still "
                f"recorded as holding {records.get(disk)}.",
            )
            seen("a failed flash forgot its disks")
