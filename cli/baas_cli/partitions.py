"""``--part LABEL:SIZE[:TYPE]`` of ``baas setup layout``, as the API's layout object.

Only the spelling is read here (a local error, exit 2, names the part it cannot
read); the rules of a partition table — labels, whole MiB, only the last one
taking the rest, the types known — are the server's, which says what it refuses
(exit 1).
"""

from __future__ import annotations

import re
from typing import Any

from baas_cli.errors import LocalError

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
REST = ("rest", "-")


def parse_size(text: str) -> int | None:
    """Bytes (``512M``, ``8G``, ``1.5T``, ``1048576``), or None for ``rest``."""
    if text.strip().lower() in REST:
        return None
    match = SIZE.match(text.strip())
    if match is None:
        raise LocalError(
            f"Not a partition size: {text!r} (e.g. 512M, 8G, or 'rest' for the rest of the disk)"
        )
    number, unit = match.groups()
    return int(float(number) * UNITS[unit.upper()])


def parse_part(text: str) -> dict[str, Any]:
    """``LABEL:SIZE[:TYPE]`` as ``{"label", "size", "type"}`` (type linux if not given)."""
    pieces = text.split(":")
    if len(pieces) not in (2, 3) or not pieces[0]:
        raise LocalError(f"Not a partition: {text!r} (LABEL:SIZE or LABEL:SIZE:TYPE, e.g. root:8G)")
    label, size = pieces[0], parse_size(pieces[1])
    kind = pieces[2] if len(pieces) == 3 and pieces[2] else "linux"
    return {"label": label, "size": size, "type": kind}


def layout(disk: str, parts: list[str]) -> dict[str, Any]:
    if not parts:
        raise LocalError("Give the partitions with --part LABEL:SIZE[:TYPE] (or --none).")
    return {"disk": disk, "partitions": [parse_part(part) for part in parts]}
