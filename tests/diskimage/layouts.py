"""Disk images for tests: sparse files, layouts that hold every case, and their truth.

Shared by the tests of :mod:`diskimage` and of its users (the agent, the catalogue).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from diskimage import BLOCK
from diskimage.datamap import RANGE_MAX, DataMap, DataMapper

MiB = 1 << 20


def make_image(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 1) -> Path:
    """A sparse file of ``size`` bytes: random data at ``(offset, length)``, holes elsewhere."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not a secret
    with path.open("wb") as file:
        file.truncate(size)
        for offset, length in extents:
            file.seek(offset)
            file.write(rng.randbytes(length))
    return path


def sample_image(directory: Path) -> Path:
    """16 MiB: data at the start, unaligned data in the middle, a hole, data at the end."""
    return make_image(
        directory / "image.raw",
        16 * MiB,
        [(0, 3 * MiB + 4096), (5 * MiB + 1000, 10_000), (9 * MiB, 8192), (15 * MiB, MiB)],
    )


def disk_image() -> bytes:
    """Data, a zero run, a lone block, zeros that do not fill a block, an unaligned tail."""
    return (
        os.urandom(RANGE_MAX + 3 * BLOCK)  # one run longer than a range: cut in two
        + bytes(3 * MiB)
        + os.urandom(BLOCK)
        + bytes(BLOCK - 1)
        + b"\x01"  # a block that is almost all zeros is data
        + bytes(2 * MiB)
        + b"tail"
    )


def expected_ranges(data: bytes) -> list[list]:
    """The map's ranges, block by block, the slow and obvious way."""
    runs: list[list[int]] = []
    for offset in range(0, len(data), BLOCK):
        if data[offset : offset + BLOCK].strip(b"\0"):
            if runs and runs[-1][1] == offset and offset - runs[-1][0] < RANGE_MAX:
                runs[-1][1] = min(offset + BLOCK, len(data))
            else:
                runs.append([offset, min(offset + BLOCK, len(data))])
    return [[s, e, hashlib.sha256(data[s:e]).hexdigest()] for s, e in runs]


def map_of(path: Path) -> dict:
    mapper = DataMapper()
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            mapper.update(chunk)
    return mapper.finish(hashlib.sha256(path.read_bytes()).hexdigest()).as_json()


def parsed(path: Path) -> DataMap:
    data = map_of(path)
    return DataMap.from_json(data, size=data["size"], sha256=data["sha256"])
