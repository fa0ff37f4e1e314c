"""A setup's partition table on a disk: kept when the disk has it, written when not.

The instructions' ``layouts`` (docs/agent-protocol.md) name a disk and its
partitions in order (label, type GUID, size in bytes or null for the rest of
the disk). Contracts:

- :func:`apply` plans the table on the disk's real size with
  :func:`diskimage.gpt.plan` (the server's very rules), reads the table the
  disk has, and leaves it alone when it is the same partitions (numbers,
  labels, types, offsets and sizes): what the partitions hold survives. Only
  otherwise does it zero the first MiB of the disk and of each partition (no
  old filesystem is then found by its label) and write the table, both
  copies. Either way the kernel knows the table afterwards (``BLKRRPART``)
  and every partition's node exists, or it raises :class:`LayoutFailed`.
  It returns the table as it is on the disk, for the result.
- :func:`with_partitions` maps partition paths the server names (``/dev/sda3``)
  onto the partition nodes of the mapped disk's target (``/dev/loop0p3``), so
  a run with ``--disk`` mappings writes and reads partitions too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baas_agent import partitions
from baas_agent.disks import DiskMap, is_block_device
from baas_agent.instructions import FlashError
from diskimage import gpt

log = logging.getLogger(__name__)
SCAN_WAIT = 2.0  # seconds the kernel's own scan of a table may take to show its partitions


class LayoutFailed(FlashError):
    """The table cannot be put on the disk; the message is the reason reported."""


@dataclass(frozen=True)
class LayoutInstruction:
    disk: str
    specs: tuple[gpt.Spec, ...]

    @classmethod
    def from_json(cls, data: Any) -> LayoutInstruction:
        if not isinstance(data, dict) or not isinstance(data.get("disk"), str):
            raise LayoutFailed(f"a partition table instruction without a disk: {data!r}")
        items = data.get("partitions")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise LayoutFailed(f"the partition table of {data['disk']} has no partition list")
        try:
            specs = tuple(
                gpt.Spec(i["label"], i.get("size"), i.get("type", "linux")) for i in items
            )
            gpt.check_specs(specs)
        except (KeyError, TypeError, gpt.LayoutError) as exc:
            raise LayoutFailed(f"the partition table of {data['disk']}: {exc}") from exc
        return cls(data["disk"], specs)

    def label(self) -> str:
        return f"partition table of {self.disk}"


def parse(data: Any) -> list[LayoutInstruction]:
    """The instructions' ``layouts`` (absent: none)."""
    return [LayoutInstruction.from_json(item) for item in data or []]


def _zero(fd: int, start: int, length: int) -> None:
    zeros = bytes(min(length, gpt.MIB))
    end = start + length
    while start < end:
        start += os.pwrite(fd, zeros[: end - start], start)


def _write_table(fd: int, size: int, wanted: list[gpt.Partition]) -> None:
    _zero(fd, 0, gpt.FIRST)
    for partition in wanted:
        _zero(fd, partition.start, min(gpt.MIB, partition.size))
    gpt.write(fd, size, wanted)


def _open(target: Path) -> int:
    block = is_block_device(target)
    if not block and str(target).startswith("/dev/"):
        raise LayoutFailed(f"{target} is not a block device")
    try:
        return os.open(target, os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if block else 0))
    except OSError as exc:
        raise LayoutFailed(f"cannot open {target} to partition it: {exc.strerror}") from exc


def apply(instruction: LayoutInstruction, disks: DiskMap) -> dict[str, Any]:
    """Put the table on its disk unless it is there; returns it as reported in the result."""
    target = disks.target(instruction.disk)
    fd = _open(target)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            wanted = gpt.plan(size, instruction.specs)
        except gpt.LayoutError as exc:
            raise LayoutFailed(f"{instruction.disk}: {exc}") from exc
        created = not gpt.same(gpt.read(fd), wanted)
        if created:
            log.info("%s: writing the partition table", instruction.disk)
            _write_table(fd, size, wanted)
        else:
            log.info("%s: the partition table is there already, kept", instruction.disk)
    finally:
        os.close(fd)
    _settle(target, wanted, reread=created)
    for partition in wanted:
        log.info(
            "%s: partition %d '%s', %d bytes at %d",
            instruction.disk,
            partition.number,
            partition.label,
            partition.size,
            partition.start,
        )
    return {
        "disk": instruction.disk,
        "created": created,
        "size": size,
        "partitions": [p.as_json() for p in wanted],
    }


def _settle(target: Path, wanted: list[gpt.Partition], *, reread: bool) -> None:
    """The kernel knows the table and the partitions' nodes are there (block devices).

    A new table is re-read (``BLKRRPART``); a kernel that reads no GPT itself
    (or a table kept that it never read) is told each partition (``BLKPG``).
    """
    if not is_block_device(target):
        return
    nodes = [Path(gpt.partition_path(str(target), p.number)) for p in wanted]
    if reread and not partitions.reread(target):
        raise LayoutFailed(
            f"the kernel did not re-read the partition table of {target}: is it in use?"
        )
    if not partitions.wait_for(nodes[0], timeout=SCAN_WAIT):
        for partition in wanted:
            partitions.add(target, partition.number, partition.start, partition.size)
    for node in nodes:
        if not partitions.wait_for(node):
            raise LayoutFailed(f"{node} did not appear after the partition table was written")


def partition_number(path: str, disk: str) -> int | None:
    """N when ``path`` is Linux's name of partition N of ``disk``, else None."""
    rest = path[len(disk) :] if path.startswith(disk) else ""
    match = re.fullmatch(r"p(\d+)" if disk[-1:].isdigit() else r"(\d+)", rest)
    return int(match.group(1)) if match else None


def with_partitions(disks: DiskMap, paths: Iterable[str]) -> DiskMap:
    """``disks``, with each partition path of a mapped whole disk mapped to its node.

    Without mappings every path is its own target: nothing to add. A partition
    of a disk mapped to a regular file has no node: it stays unmapped (and is
    refused by name when used).
    """
    if not disks.mapping:
        return disks
    mapping = dict(disks.mapping)
    for path in paths:
        if path in mapping:
            continue
        for disk, target in disks.mapping.items():
            number = partition_number(path, disk)
            if number is not None and is_block_device(Path(target)):
                mapping[path] = gpt.partition_path(target, number)
                break
    return DiskMap(mapping)
