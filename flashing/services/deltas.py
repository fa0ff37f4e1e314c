"""The delta of a write instruction: what differs from what the disk holds.

A disk's recorded content (``DiskContent``, kept by ``disk_contents_record``
when a deployment is done, forgotten when one fails while writing) names the
version on it. When a deployment writes another version onto that disk, the
instruction carries the ranges of the new version's map that the recorded
version's map does not have (with where they are in the data stream), and
the runs that held data and are zeros now (``diskimage.delta``). A changed
range of which only some blocks differ from the recorded version's bytes
there goes as those blocks (``parts``: each run with the BLAKE3 of its new
bytes), when they are fewer bytes than the range's piece of the data stream
and at most three quarters of the range (else the range goes whole):
one changed file in a 16 MiB range of files that lie back to back costs its
own blocks, not the range. The agent checks that the disk still holds the
rest, and writes only those; a disk that does not is flashed in full
(docs/agent-protocol.md §5a).
"""

from __future__ import annotations

import logging
from typing import Any

from catalogue.interface import (
    StoredMismatch,
    version_blocks_changed,
    version_data_layout,
    version_written_map,
)
from catalogue.models import Version
from diskimage.datamap import DataMap
from diskimage.delta import map_delta
from flashing.models import DeploymentImage, DiskContent

logger = logging.getLogger(__name__)
MAX_PARTS = 64  # runs of blocks per range; past that the range goes whole
MAX_ALL_PARTS = 4096  # runs in one instruction (its JSON stays small); the rest go whole


def delta_entry(*, row: DeploymentImage, version: Version) -> dict[str, Any] | None:
    """The ``delta`` of the write of ``version`` by ``row``, or None when there is none.

    None when nothing is recorded on the disk, when it is this very version
    (the agent's check of an unchanged disk is the cheaper question), when
    the recorded version is gone or of another size, or when either version
    has no map with its SHA-256s, or the new one no data stream.
    """
    content = (
        DiskContent.objects.filter(machine_id=row.deployment.machine_id, disk=row.disk)
        .select_related("version")
        .first()
    )
    base = content.version if content is not None else None
    if base is None or base.pk == version.pk:
        return None
    base_map = version_written_map(base)
    layout = version_data_layout(version)
    if base_map is None or layout is None:
        return None
    new_map, pieces = layout
    try:
        delta = map_delta(base_map, new_map)
    except ValueError as exc:
        logger.info("No delta from version %s to %s: %s", base.pk, version.pk, exc)
        return None
    parts = _parts(base, base_map, version, new_map, pieces, list(delta.changed))
    whole = [index for index in delta.changed if index not in parts]
    return {
        "image": str(base.image_id),
        "version": base.number,
        "sha256": base_map.sha256,
        "ranges": [[index, *pieces[index]] for index in whole],
        "parts": [[index, *run] for index, runs in sorted(parts.items()) for run in runs],
        "zeros": [list(run) for run in delta.zeros],
        "changed_bytes": sum(new_map.ranges[i][1] - new_map.ranges[i][0] for i in whole)
        + sum(end - start for runs in parts.values() for start, end, _ in runs),
    }


def _parts(
    base: Version,
    base_map: DataMap,
    version: Version,
    new_map: DataMap,
    pieces: list[tuple[int, int]],
    changed: list[int],
) -> dict[int, list[tuple[int, int, str]]]:
    """The changed ranges that go as some of their blocks: index → runs (start, end, BLAKE3);
    no runs for a range whose bytes the disk holds already (the maps cut it otherwise)."""
    found: dict[int, list[tuple[int, int, str]]] = {}
    total = 0
    try:
        for index, runs in version_blocks_changed(
            base=base, base_map=base_map, new=version, new_map=new_map, indices=changed
        ):
            size = sum(end - start for start, end, _ in runs)
            start, end, _ = new_map.ranges[index]
            if len(runs) > MAX_PARTS or total + len(runs) > MAX_ALL_PARTS:
                continue
            if size < min(pieces[index][1], (end - start) * 3 // 4):
                found[index] = runs  # none: the same bytes, cut otherwise; kept as it is
                total += len(runs)
    except (StoredMismatch, OSError, ValueError) as exc:
        logger.warning(
            "Changed ranges of version %s go whole (comparing with version %s: %s)",
            version.pk,
            base.pk,
            exc,
        )
        return {}
    return found
