"""A setup's partition table: the one home of its shape, read from and written to JSON.

A setup may declare a GPT for one disk (``ImageSetup.layout``)::

    {"disk": "/dev/sda",
     "partitions": [{"label": "boot", "size": 536870912, "type": "esp"},
                    {"label": "root", "size": 8589934592},
                    {"label": "home", "size": null, "type": "home"}]}

and pin images to its partitions by label (``ImageFrozen.partition``). The
byte-level rules (where each partition goes, what fits a disk) are
``diskimage.gpt``'s, shared with the agent; this module turns a request's JSON
into that module's ``Spec`` list, with errors a person can act on.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from catalogue.models import validate_target_disk
from diskimage import gpt


def _error(message: str) -> ValidationError:
    return ValidationError({"layout": message})


def _spec(index: int, item: Any) -> gpt.Spec:
    if not isinstance(item, dict):
        raise _error(f"Partition {index} is not an object with a label, a size and a type.")
    unknown = set(item) - {"label", "size", "type"}
    if unknown:
        raise _error(f"Partition {index} has unknown fields: {', '.join(sorted(unknown))}.")
    label, size, kind = item.get("label"), item.get("size"), item.get("type", "linux")
    if not isinstance(label, str) or not isinstance(kind, str):
        raise _error(f"Partition {index}: a label and a type are text.")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise _error(f"Partition {index} ('{label}'): a size is a number of bytes, or null.")
    return gpt.Spec(label=label, size=size, type=kind)


def parse(layout: Any) -> tuple[str, list[gpt.Spec]]:
    """The disk and partitions of a layout as stored or sent; raises ``ValidationError``."""
    if not isinstance(layout, dict) or set(layout) - {"disk", "partitions"}:
        raise _error('A partition table is {"disk": "/dev/sda", "partitions": [...]}.')
    disk, items = layout.get("disk"), layout.get("partitions")
    if not isinstance(disk, str):
        raise _error("A partition table names its disk, such as /dev/sda.")
    try:
        validate_target_disk(disk)
    except ValidationError as exc:
        raise _error(exc.messages[0]) from exc
    if disk.startswith("/dev/disk/"):
        # Its partitions' names (…-part2) are udev's, which the management OS lacks.
        raise _error(
            f"Name the disk of a partition table by its kernel name (/dev/sda, /dev/nvme0n1), "
            f"not {disk}: its partitions are found by that name."
        )
    if not isinstance(items, list):
        raise _error("A partition table's partitions are a list.")
    specs = [_spec(index, item) for index, item in enumerate(items, 1)]
    try:
        gpt.check_specs(specs)
    except gpt.LayoutError as exc:
        raise _error(str(exc)) from exc
    return disk, specs


def normalize(layout: Any) -> dict[str, Any] | None:
    """The layout as stored: checked, every partition with its type spelled out; None stays."""
    if layout is None:
        return None
    disk, specs = parse(layout)
    return {
        "disk": disk,
        "partitions": [
            {"label": spec.label, "size": spec.size, "type": spec.type.lower()} for spec in specs
        ],
    }


def specs_of(layout: dict[str, Any]) -> list[gpt.Spec]:
    """The partitions of a stored (already checked) layout."""
    return [gpt.Spec(p["label"], p["size"], p["type"]) for p in layout["partitions"]]


def number_of(layout: dict[str, Any] | None, label: str) -> int | None:
    """The partition number (from 1) of ``label`` in a stored layout, else None."""
    for number, item in enumerate((layout or {}).get("partitions") or [], 1):
        if item.get("label") == label:
            return number
    return None


def device_of(layout: dict[str, Any] | None, label: str) -> str | None:
    """Linux's device path of the partition ``label`` (``/dev/sda2``), else None."""
    number = number_of(layout, label)
    if layout is None or number is None:
        return None
    return gpt.partition_path(layout["disk"], number)


def size_of(layout: dict[str, Any] | None, label: str) -> int | None:
    """The declared size of the partition ``label``; None for the rest of the disk or none."""
    number = number_of(layout, label)
    if layout is None or number is None:
        return None
    size: int | None = layout["partitions"][number - 1]["size"]
    return size


def as_json(layout: dict[str, Any] | None) -> dict[str, Any] | None:
    """For the API: each partition with its number and device path."""
    if layout is None:
        return None
    return {
        "disk": layout["disk"],
        "partitions": [
            {**item, "number": n, "device": gpt.partition_path(layout["disk"], n)}
            for n, item in enumerate(layout["partitions"], 1)
        ],
    }


def mib(size: int) -> str:
    """``size`` bytes, with MiB for people."""
    return f"{size} bytes ({size / gpt.MIB:.1f} MiB)"
