"""The delta of a write instruction: what differs from what the disk holds.

A disk's recorded content (``DiskContent``, kept by ``disk_contents_record``
when a deployment is done, forgotten when one fails while writing) names the
version on it. When a deployment writes another version onto that disk, the
instruction carries the ranges of the new version's map that the recorded
version's map does not have (with where they are in the data stream), and
the runs that held data and are zeros now (``diskimage.delta``). The agent
checks that the disk still holds the rest, and writes only those; a disk that
does not is flashed in full (docs/agent-protocol.md §5a).
"""

from __future__ import annotations

import logging
from typing import Any

from catalogue.interface import version_data_layout, version_written_map
from catalogue.models import Version
from diskimage.delta import map_delta
from flashing.models import DeploymentImage, DiskContent

logger = logging.getLogger(__name__)


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
    return {
        "image": str(base.image_id),
        "version": base.number,
        "sha256": base_map.sha256,
        "ranges": [[index, *pieces[index]] for index in delta.changed],
        "zeros": [list(run) for run in delta.zeros],
        "changed_bytes": delta.changed_bytes(new_map),
    }
