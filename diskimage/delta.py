"""What differs between two versions of a disk, by their data maps.

A disk that holds version *n* of an image needs, to hold version *n+1*, only
the ranges of *n+1*'s map that *n*'s map does not have (same start, end and
SHA-256), and zeros where *n* had data that *n+1* has not. Everything else —
the ranges both maps share, and the zeros both have — is already there, if
the disk still holds *n*.

Contract: for maps ``base`` and ``new`` of the same size, :func:`map_delta`
returns the indices of ``new``'s ranges to write and the ``[start, end)``
runs to zero, such that a disk holding ``base``, with those ranges written
and those runs zeroed, holds ``new``; and :meth:`Delta.kept_zeros` lists the
zeros of ``new`` the disk must already hold. Byte offsets only: no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from diskimage.datamap import DataMap


@dataclass(frozen=True)
class Delta:
    changed: tuple[int, ...]  # indices of the new map's ranges that differ
    zeros: tuple[tuple[int, int], ...]  # [start, end) that held data and are zeros now
    # Indices of changed ranges written by some of their blocks (the rest is kept, and
    # checked with them): neither kept whole nor written whole.
    parted: tuple[int, ...] = ()

    def changed_bytes(self, new: DataMap) -> int:
        return sum(new.ranges[i][1] - new.ranges[i][0] for i in self.changed)

    def zero_bytes(self) -> int:
        return sum(end - start for start, end in self.zeros)

    def kept(self, new: DataMap) -> list[int]:
        """The indices of ``new``'s ranges the disk already holds (if it holds the base)."""
        changed = set(self.changed) | set(self.parted)
        return [i for i in range(len(new.ranges)) if i not in changed]

    def kept_zeros(self, new: DataMap) -> Iterator[tuple[int, int]]:
        """``new``'s gaps less the runs to zero: zeros the disk must hold already."""
        yield from subtract(list(new.gaps()), self.zeros)


def map_delta(base: DataMap, new: DataMap) -> Delta:
    """What to write and zero to turn a disk holding ``base`` into one holding ``new``.

    Raises ValueError when the maps are of disks of different sizes, or lack
    the per-range SHA-256s (a map whose digests a job has yet to compute).
    """
    if base.size != new.size:
        raise ValueError(f"a disk of {base.size} bytes cannot become one of {new.size}")
    for datamap in (base, new):
        if any(not digest for _, _, digest in datamap.ranges):
            raise ValueError("a map without its SHA-256s cannot be compared")
    shared = set(base.ranges)
    changed = tuple(i for i, item in enumerate(new.ranges) if item not in shared)
    new_data = [(start, end) for start, end, _ in new.ranges]
    base_data = [(start, end) for start, end, _ in base.ranges]
    return Delta(changed=changed, zeros=tuple(subtract(base_data, new_data)))


def subtract(
    runs: Sequence[tuple[int, int]], minus: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint ``runs`` outside sorted, disjoint ``minus``, merged."""
    pieces: list[tuple[int, int]] = []
    index = 0
    for start, end in runs:
        while index < len(minus) and minus[index][1] <= start:
            index += 1
        position, probe = start, index
        while probe < len(minus) and minus[probe][0] < end:
            if minus[probe][0] > position:
                pieces.append((position, minus[probe][0]))
            position = max(position, minus[probe][1])
            probe += 1
        if position < end:
            pieces.append((position, end))
    return [
        (offset, offset + length)
        for offset, length in spans([(start, end - start) for start, end in pieces])
    ]


def spans(pieces: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(offset, length)`` pieces of a stream, in order, with the touching ones merged."""
    merged: list[tuple[int, int]] = []
    for offset, length in pieces:
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((offset, length))
    return merged
