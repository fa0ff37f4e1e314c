"""A deployment's partition table: what the agent is told, and what it reported.

A setup with a partition table (``catalogue.layouts``) is queued with a copy
of it (``Deployment.layout``). The agent is told the table
(``layout_instructions``); it writes it unless the disk has it already, then
writes each image into its partition, and reports the table as it is on the
disk (``layout_mismatch`` checks the report, ``layout_record`` keeps it). A
table written anew leaves nothing of what the disk's other partitions held:
what was recorded on them is forgotten.
"""

from __future__ import annotations

from typing import Any

from diskimage import gpt
from flashing.models import Deployment, DiskContent
from flashing.services.common import disk_writes, event_record, on_disk


def layout_instructions(deployment: Deployment) -> list[dict[str, Any]]:
    """The ``layouts`` of the agent's instructions: one table, sizes as declared."""
    layout = deployment.layout
    if not layout:
        return []
    partitions = [
        {
            "number": number,
            "label": item["label"],
            "size": item["size"],
            "type": gpt.type_guid(item["type"]),
        }
        for number, item in enumerate(layout["partitions"], 1)
    ]
    return [{"disk": layout["disk"], "partitions": partitions}]


def _key(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item.get("number"), item.get("label"), str(item.get("type", "")).lower())


def layout_mismatch(deployment: Deployment, reported: list[dict[str, Any]]) -> str | None:
    """Why the reported tables are not the one asked for, or None when they are."""
    wanted = layout_instructions(deployment)
    if not wanted and not reported:
        return None
    if not wanted:
        return "the agent reported a partition table it was not asked for"
    table = wanted[0]
    found = next((r for r in reported if r.get("disk") == table["disk"]), None)
    if found is None:
        return f"the agent did not report the partition table of {table['disk']}"
    partitions = found.get("partitions") or []
    if [_key(p) for p in partitions] != [_key(p) for p in table["partitions"]]:
        return f"the partition table the agent reported on {table['disk']} is not the setup's"
    for want, got in zip(table["partitions"], partitions, strict=True):
        start, size = got.get("start"), got.get("size")
        if not isinstance(start, int) or not isinstance(size, int) or size <= 0 or start < 0:
            return f"the agent reported no place on {table['disk']} for partition '{want['label']}'"
        if want["size"] is not None and size != want["size"]:
            return (
                f"partition '{want['label']}' on {table['disk']} is {got.get('size')} bytes, "
                f"not {want['size']}"
            )
    return None


def _describe(table: dict[str, Any]) -> str:
    return ", ".join(
        f"{p['number']} '{p['label']}' {p['size'] // gpt.MIB} MiB at {p['start'] // gpt.MIB} MiB"
        for p in table.get("partitions") or []
    )


def _forget(deployment: Deployment, stale: list[int], why: str) -> None:
    rows = DiskContent.objects.filter(pk__in=stale)
    names = sorted(rows.values_list("disk", flat=True))
    if names:
        rows.delete()
        event_record(
            deployment=deployment,
            actor=None,
            action="disks_unknown",
            message=f"What was recorded on {', '.join(names)} is forgotten: {why}.",
        )


def layout_record(deployment: Deployment, reported: list[dict[str, Any]]) -> None:
    """Note each table in the event log, and forget what a write left untrue.

    A table written anew leaves nothing of what the disk held elsewhere; an
    image written over a whole disk leaves nothing of its partitions (a system
    image on /dev/sda over the user data recorded on /dev/sda2), and one written
    into a partition leaves the whole disk's record untrue (the table kept, /dev/sda2
    written: what /dev/sda was recorded as holding, it holds no more). For
    ``agent_result`` once the report matched (``layout_mismatch``).
    """
    written = set(disk_writes(deployment).values_list("disk", flat=True))
    rows = list(DiskContent.objects.filter(machine=deployment.machine).exclude(disk__in=written))
    for table in reported:
        disk, created = table["disk"], bool(table.get("created"))
        event_record(
            deployment=deployment,
            actor=None,
            action="layout",
            message=f"Partition table of {disk} {'written' if created else 'already there, kept'}"
            f": {_describe(table)}.",
            disk=disk,
            created=created,
        )
        if created:
            stale = [row.pk for row in rows if on_disk(row.disk, disk)]
            _forget(deployment, stale, f"a new partition table was written on {disk}")
    for disk in sorted(written):  # the same events, in the same order, every time
        stale = [row.pk for row in rows if row.disk != disk and on_disk(row.disk, disk)]
        _forget(deployment, stale, f"an image was written over the whole of {disk}")
        stale = [row.pk for row in rows if row.disk != disk and on_disk(disk, row.disk)]
        _forget(deployment, stale, f"an image was written into its partition {disk}")
