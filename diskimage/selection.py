"""A selection of data map ranges by index, as ``?ranges=1,4-6,9`` names them.

One wire form for every request that asks for some ranges of a version (the
data stream of a delta re-flash, the block hashes of a delta sync-back): indices
ascending, runs as ``first-last``. The server parses it, the agent writes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SELECTION = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
MAX_SELECTION = 3000  # characters: the request line must stay under gunicorn's 4094


def format_selection(indices: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7] → ``0-3,7`` (``indices`` ascending)."""
    parts: list[str] = []
    first = 0
    while first < len(indices):
        last = first
        while last + 1 < len(indices) and indices[last + 1] == indices[last] + 1:
            last += 1
        low, high = indices[first], indices[last]
        parts.append(f"{low}" if low == high else f"{low}-{high}")
        first = last + 1
    return ",".join(parts)


def parse_selection(spec: str, count: int) -> list[int]:
    """The indices of ``1,4-6,9`` (ascending, each below ``count``); ValueError otherwise."""
    if len(spec) > MAX_SELECTION or not SELECTION.fullmatch(spec):
        raise ValueError(
            f"ranges is a list of map indices and runs such as 1,4-6,9, "
            f"at most {MAX_SELECTION} characters"
        )
    indices: list[int] = []
    for item in spec.split(","):
        first, _, last = item.partition("-")
        start, end = int(first), int(last or first)
        if end < start or (indices and start <= indices[-1]) or end >= count:
            raise ValueError(f"ranges must ascend and stay below {count}: {item!r}")
        indices.extend(range(start, end + 1))
    return indices
