"""Delta re-flash: a disk that holds version n gets only what version n+1 changed.

The write instruction's ``delta`` (docs/agent-protocol.md §5a) names the
version the server recorded on the disk (its *base*), the ranges of the new
version's map that the base does not have — with where their bytes are in
the new version's data stream — and the runs that held data in the base and
are zeros now. The agent:

1. checks that the disk still holds the rest of the new version: every range
   the two versions share hashes right (BLAKE3 where it can, as the check of
   an unchanged disk does), every zero they share reads as zero;
2. meanwhile, downloads the changed data (``GET <data_url>?ranges=1,4-6,9``: one
   request for all of them, or a few when the list is long) on a thread of
   its own, holding at most :data:`baas_agent.prefetch.BUDGET` bytes of it in
   memory until the check has passed (:mod:`baas_agent.prefetch`);
3. then writes the changed ranges, reads them back from the medium and checks
   them (BLAKE3, else SHA-256), zeroes the runs that became zeros and reads
   them back as zeros.

Before the changed ranges, the delta's ``parts`` — changed ranges of which only
some blocks differ — are downloaded as those blocks and landed range by range,
each range checked whole with its blocks in place (:mod:`baas_agent.deltaparts`).

Contract: :func:`write_delta` returns None when the disk holds the new version
(verified as above), or why the delta could not be used — the disk does not
hold the base as recorded, or the delta's data did not land — and then the
caller flashes the disk in full. Nothing is written before the check of what
the delta keeps has passed. Only :class:`~baas_agent.client.DeploymentOver`
escapes.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from baas_agent.client import ApiError, Client, DeploymentOver
from baas_agent.compress import CompressionError
from baas_agent.deltaparts import NotHeld, NotLanded, Part, check_parts, land_parts
from baas_agent.deltaparts import selections as part_selections
from baas_agent.disks import DiskError, is_block_device
from baas_agent.landing import can_land, land_delta
from baas_agent.prefetch import Prefetch
from diskimage.datamap import DataMap
from diskimage.delta import Delta
from diskimage.verify import Verifier

log = logging.getLogger(__name__)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SELECTION_LIMIT = 2500  # characters of ?ranges= per request (request lines stay short)


class DeltaError(ValueError):
    """The instruction's delta is malformed, or does not fit the version's map."""


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DeltaError(f"{value!r} is not a byte count or index")
    return value


@dataclass(frozen=True)
class DeltaInstruction:
    """The ``delta`` of a write instruction: the recorded base and what differs from it."""

    image: str
    version: int
    sha256: str
    changed: tuple[tuple[int, int, int], ...]  # map index, offset and length in the data stream
    zeros: tuple[tuple[int, int], ...]  # [start, end) to zero
    parts: tuple[Part, ...] = ()  # map index, [start, end) of changed blocks, their BLAKE3

    @classmethod
    def from_json(cls, data: Any) -> DeltaInstruction:
        if not isinstance(data, dict):
            raise DeltaError(f"a delta is an object, not {data!r}")
        image, sha256 = data.get("image"), data.get("sha256")
        if not isinstance(image, str) or not isinstance(sha256, str):
            raise DeltaError("a delta names its base's image and SHA-256")
        if not SHA256_HEX.fullmatch(sha256):
            raise DeltaError(f"the delta's base SHA-256 is not one: {sha256!r}")
        changed = tuple(_triple(item) for item in _list(data.get("ranges")))
        zeros = tuple(_pair(item) for item in _list(data.get("zeros")))
        parts = tuple(_part(item) for item in _list(data.get("parts", [])))
        return cls(image, _int(data.get("version")), sha256, changed, zeros, parts)

    def label(self) -> str:
        return f"v{self.version} of image {self.image}"

    def delta(self, datamap: DataMap) -> Delta:
        """The delta against ``datamap`` (the new version's), checked to fit it.

        Raises DeltaError for indices out of order or out of the map, or runs
        to zero that are not zeros of the new version (that would be data lost).
        """
        indices = [index for index, _, _ in self.changed]
        if indices != sorted(set(indices)) or (indices and indices[-1] >= len(datamap.ranges)):
            raise DeltaError("the delta's ranges are out of order or out of the map")
        gaps = list(datamap.gaps())
        position = 0
        for start, end in self.zeros:
            if start < position or end <= start:
                raise DeltaError("the delta's runs of zeros are out of order")
            if not any(g_start <= start and end <= g_end for g_start, g_end in gaps):
                raise DeltaError(f"bytes {start}-{end} hold data in the new version")
            position = end
        if reason := check_parts(self.parts, datamap, set(indices)):
            raise DeltaError(reason)
        parted = tuple(sorted({index for index, _, _, _ in self.parts}))
        return Delta(changed=tuple(indices), zeros=self.zeros, parted=parted)

    def part_bytes(self) -> int:
        return sum(end - start for _, start, end, _ in self.parts)

    def selections(self, limit: int = SELECTION_LIMIT) -> list[tuple[str, int]]:
        """``?ranges=`` values naming the changed ranges, each at most ``limit`` characters,
        with the bytes each answer holds: one request for many ranges."""
        out: list[tuple[str, int]] = []
        items: list[str] = []
        size = 0
        for first, last, length in _runs(self.changed):
            item = str(first) if first == last else f"{first}-{last}"
            if items and len(",".join([*items, item])) > limit:
                out.append((",".join(items), size))
                items, size = [], 0
            items.append(item)
            size += length
        if items:
            out.append((",".join(items), size))
        return out


def _runs(changed: tuple[tuple[int, int, int], ...]) -> list[tuple[int, int, int]]:
    """Consecutive indices merged: ``(first, last, bytes)``."""
    runs: list[tuple[int, int, int]] = []
    for index, _, length in changed:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index, runs[-1][2] + length)
        else:
            runs.append((index, index, length))
    return runs


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise DeltaError(f"a delta's ranges and zeros are lists, not {value!r}")
    return value


def _triple(item: Any) -> tuple[int, int, int]:
    if not isinstance(item, list) or len(item) != 3:
        raise DeltaError(f"a changed range is [index, offset, length], not {item!r}")
    return _int(item[0]), _int(item[1]), _int(item[2])


def _part(item: Any) -> Part:
    if not isinstance(item, list) or len(item) != 4 or not isinstance(item[3], str):
        raise DeltaError(f"a part is [index, start, end, blake3], not {item!r}")
    return _int(item[0]), _int(item[1]), _int(item[2]), item[3]


def _pair(item: Any) -> tuple[int, int]:
    if not isinstance(item, list) or len(item) != 2:
        raise DeltaError(f"a run of zeros is [start, end], not {item!r}")
    return _int(item[0]), _int(item[1])


def kept_mismatch(
    target: Path, datamap: DataMap, delta: Delta, progress: Callable[[int], None] | None = None
) -> str | None:
    """None if ``target`` holds what the delta keeps of ``datamap``'s image, else what differs."""
    with Verifier(target, datamap, sparse=not is_block_device(target)) as verifier:
        for index in delta.kept(datamap):
            verifier.check_range(index, fast=True)
        for start, end in delta.kept_zeros(datamap):
            verifier.check_zeros(start, end)
        return verifier.result(progress)


@dataclass
class Counted:
    """The bytes that went by."""

    total: int = 0

    def through(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.total += len(chunk)
            yield chunk


class Announced(Protocol):
    """The first progress report of the image, sent on a thread of its own
    (:meth:`baas_agent.progress.Reporter.announcing`)."""

    def wait(self) -> bool:
        """Wait for its answer; whether the server took it."""
        ...

    def join(self) -> None:
        """Wait for its answer and raise what it raised."""
        ...


def write_delta(
    client: Client,
    data_url: str,
    target: Path,
    datamap: DataMap,
    instruction: DeltaInstruction,
    *,
    label: str,
    writing: Callable[[int], None],
    verifying: Callable[[int], None],
    announced: Announced | None = None,
) -> str | None:
    """Write the delta onto ``target``; None when done and verified, else why not (see above).

    The delta's data is downloaded beside the check of what it keeps, once the server
    took ``announced`` (:mod:`baas_agent.prefetch`: at most its budget held in memory);
    nothing is written before the check has passed and ``announced`` was joined.
    """
    try:
        delta = instruction.delta(datamap)
    except DeltaError as exc:
        return f"its delta from {instruction.label()} is unusable ({exc})"
    started = time.monotonic()
    info: dict[str, str] = {}  # the content type of the changed ranges' first answer
    ahead = Prefetch(
        [
            lambda: _part_chunks(client, data_url, datamap, instruction),
            lambda: _range_chunks(client, data_url, instruction, info),
        ],
        before=announced.wait if announced is not None else None,
    )
    try:
        reason = kept_mismatch(target, datamap, delta, verifying)
        if reason is not None:
            return f"the disk does not hold {instruction.label()} as recorded ({reason})"
        if announced is not None:
            announced.join()
        checked = time.monotonic()
        log.info(
            "%s: the disk holds what %s keeps: writing the %d of %d ranges that differ "
            "(%d bytes), %d bytes of %d more, and zeroing %d bytes",
            label,
            instruction.label(),
            len(delta.changed),
            len(datamap.ranges),
            delta.changed_bytes(datamap),
            instruction.part_bytes(),
            len(delta.parted),
            delta.zero_bytes(),
        )
        downloaded = Counted()
        try:
            parts = downloaded.through(ahead.stream())
            if instruction.parts:
                land_parts(parts, target, datamap, instruction.parts, writing)
            else:
                _drained(parts)
            stream = downloaded.through(ahead.stream())
            reason = _land(stream, info, target, datamap, delta, writing)
        except NotHeld as exc:
            return f"the disk does not hold {instruction.label()} as recorded ({exc})"
        except DeploymentOver:
            raise
        except (ApiError, DiskError, CompressionError, OSError, NotLanded) as exc:
            reason = str(exc)
    finally:
        ahead.close()
    if reason is not None:
        return f"its delta from {instruction.label()} did not land ({reason})"
    log.info(
        "%s: delta from %s written and verified: %d bytes downloaded, %d written, %d zeroed "
        "(checked in %.2f s, written in %.2f s)",
        label,
        instruction.label(),
        downloaded.total,
        delta.changed_bytes(datamap) + instruction.part_bytes(),
        delta.zero_bytes(),
        checked - started,
        time.monotonic() - checked,
    )
    return None


def _drained(chunks: Iterator[bytes]) -> None:
    for chunk in chunks:
        if chunk:
            raise NotLanded("the download of no parts holds bytes")


def _with_query(data_url: str, spec: str) -> str:
    return f"{data_url}{'&' if '?' in data_url else '?'}ranges={spec}"


def _part_chunks(
    client: Client, data_url: str, datamap: DataMap, instruction: DeltaInstruction
) -> Iterator[bytes]:
    """The raw bytes of the delta's parts, in order (one request, or a few: deltaparts)."""
    for spec, size in part_selections(instruction.parts, datamap, SELECTION_LIMIT):
        yield from client.download(_with_query(data_url, spec), expected_size=size)


def _range_chunks(
    client: Client, data_url: str, instruction: DeltaInstruction, info: dict[str, str]
) -> Iterator[bytes]:
    """The data stream of the changed ranges, in order; ``info`` gets the first answer's
    content type (the stream's encoding)."""
    for n, (spec, size) in enumerate(instruction.selections()):
        yield from client.download(
            _with_query(data_url, spec), expected_size=size, info=info if n == 0 else None
        )


def _land(
    chunks: Iterator[bytes],
    info: dict[str, str],
    target: Path,
    datamap: DataMap,
    delta: Delta,
    writing: Callable[[int], None],
) -> str | None:
    """Land the changed ranges' data stream ``chunks`` and zero the runs (landing.land_delta)."""
    if not delta.changed and not delta.zeros:
        _drained(chunks)
        return None
    first = next(chunks, b"")  # the first answer says how the stream is encoded
    encoding = "zstd" if info.get("content-type") == "application/zstd" else "none"
    if delta.changed and not can_land(encoding):
        return "this agent cannot decompress zstd frames in place (no zstandard module)"
    stream = itertools.chain([first], chunks)
    return land_delta(stream, encoding, target, datamap, delta, progress=writing)
