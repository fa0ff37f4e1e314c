"""A selection of data map ranges, or of blocks of them, as ``?ranges=1,4-6,9/2-5`` names them.

One wire form for every request that asks for some ranges of a version (the
data stream of a delta re-flash, the block hashes of a delta sync-back): items
separated by commas, each

* ``i``: range ``i`` of the map, whole;
* ``i-j``: ranges ``i`` to ``j``, whole;
* ``i/a`` or ``i/a-b``: blocks ``a`` to ``b`` (``BLOCK`` bytes each, counted from
  the range's start; the range's last block may be short) of range ``i`` alone.

Items ascend (a range's blocks in order, never overlapping, never beside the
whole range). The server parses it, the agent writes it. Requests that take
whole ranges only (block hashes) parse with :func:`parse_selection`, which
refuses parts; the data stream parses with :func:`parse_pieces`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from diskimage import BLOCK

SELECTION = re.compile(r"\d+(-\d+|/\d+(-\d+)?)?(,\d+(-\d+|/\d+(-\d+)?)?)*")
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


def format_part(index: int, start: int, end: int) -> str:
    """Bytes ``[start, end)`` of range ``index`` (offsets in the range: ``start`` on a block,
    ``end`` on a block or the range's end) → ``index/a-b``."""
    first, last = start // BLOCK, (end - 1) // BLOCK
    return f"{index}/{first}" if first == last else f"{index}/{first}-{last}"


def parse_selection(spec: str, count: int) -> list[int]:
    """The indices of ``1,4-6,9`` (ascending, each below ``count``); ValueError otherwise,
    and for parts of ranges (``4/0-3``), which such a request does not take."""
    indices: list[int] = []
    for index, part in _items(spec, count):
        if part is not None:
            raise ValueError("ranges here are whole ranges (1,4-6,9), not blocks of them")
        if indices and index <= indices[-1]:
            raise ValueError(f"ranges must ascend and stay below {count}: {index}")
        indices.append(index)
    return indices


def parse_pieces(spec: str, lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(index, start, end)`` of each piece ``spec`` names, in order: ``[start, end)`` are
    offsets in range ``index``, whose length is ``lengths[index]`` (``(i, 0, length)`` for
    a whole range). ValueError when malformed, out of order, overlapping or out of range."""
    pieces: list[tuple[int, int, int]] = []
    for index, part in _items(spec, len(lengths)):
        length = lengths[index]
        start, end = (0, length) if part is None else (part[0] * BLOCK, (part[1] + 1) * BLOCK)
        if start >= length or end - BLOCK >= length:
            raise ValueError(f"range {index} has no block {end // BLOCK - 1}")
        end = min(end, length)
        if (pieces and (index, start) < pieces[-1][:2]) or _overlaps(pieces, index, start):
            raise ValueError(f"ranges must ascend without overlapping: {index}")
        pieces.append((index, start, end))
    return pieces


def _overlaps(pieces: list[tuple[int, int, int]], index: int, start: int) -> bool:
    return bool(pieces) and pieces[-1][0] == index and pieces[-1][2] > start


def _items(spec: str, count: int) -> list[tuple[int, tuple[int, int] | None]]:
    """Each range named, ``(index, None)``, or ``(index, (first block, last block))``;
    every index below ``count``."""
    if len(spec) > MAX_SELECTION or not SELECTION.fullmatch(spec):
        raise ValueError(
            f"ranges is a list of map indices and runs such as 1,4-6,9 (or blocks of a "
            f"range: 9/0-3), at most {MAX_SELECTION} characters"
        )
    items: list[tuple[int, tuple[int, int] | None]] = []
    for item in spec.split(","):
        head, slash, blocks = item.partition("/")
        if slash:
            first, _, last = blocks.partition("-")
            low, high = int(first), int(last or first)
            if high < low:
                raise ValueError(f"blocks must ascend: {item!r}")
            if int(head) >= count:
                raise ValueError(f"ranges must stay below {count}: {item!r}")
            items.append((int(head), (low, high)))
            continue
        first, _, last = head.partition("-")
        start, end = int(first), int(last or first)
        if end < start or end >= count:
            raise ValueError(f"ranges must ascend and stay below {count}: {item!r}")
        items.extend((index, None) for index in range(start, end + 1))
    return items
