"""Serving a qcow2 version's raw rendition: as a download, its map, its data stream.

Apart from ``renditions`` (which makes it, a step of the version's processing) so
that a rendition found missing here can have the pipeline make it again without
a circle of imports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from catalogue.models import Compression, RawState, Version
from catalogue.services.datastream import DataStream
from catalogue.services.delivery import Representation
from catalogue.services.pipeline import version_process
from catalogue.services.renditions import (
    rendition_check,
    rendition_key,
    rendition_map_path,
    rendition_path,
)
from diskimage.datamap import DataMap

logger = logging.getLogger(__name__)


def rendition_open(version: Version) -> Representation:
    """The rendition as a download (raw, seekable); RenditionNotReady/RenditionFailed else."""
    rendition_check(version)
    try:
        stream = open(rendition_path(*rendition_key(version)), "rb")  # noqa: SIM115 - the response closes it
    except FileNotFoundError:
        _lost(version)
    size = os.fstat(stream.fileno()).st_size
    return Representation(version, stream, size, Compression.NONE, seekable=True)


def rendition_map(version: Version) -> DataMap:
    """The rendition's data map; RenditionNotReady/RenditionFailed while there is none."""
    rendition_check(version)
    try:
        datamap = DataMap.loads(rendition_map_path(*rendition_key(version)).read_bytes())
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        _lost(version)
    if datamap.sha256 != version.raw_sha256:
        _lost(version)
    return datamap


@dataclass
class RenditionDataStream(DataStream):
    """The data ranges of a rendition: named by the rendition's SHA-256, not the qcow2's."""

    def etag(self) -> str:
        return f'"{self.version.raw_sha256}.data.none.{self.size}"'


def rendition_data_open(version: Version) -> RenditionDataStream:
    """The bytes of the rendition's data ranges, in order (what agents write)."""
    datamap = rendition_map(version)
    try:
        stream = open(rendition_path(*rendition_key(version)), "rb")  # noqa: SIM115 - the response closes it
    except FileNotFoundError:
        _lost(version)
    pieces = [(start, end - start) for start, end, _ in datamap.ranges]
    return RenditionDataStream(version, stream, pieces, Compression.NONE)


def _lost(version: Version) -> Any:
    """A rendition whose file or map went missing: made again, and meanwhile not ready."""
    logger.error("The raw rendition of version %s is missing; making it again", version.pk)
    Version.objects.filter(pk=version.pk).update(raw_state=RawState.PENDING, raw_sha256="")
    try:
        version_process(version.pk)
    except Exception:  # a broker outage: the processing sweep sends it later
        logger.exception("Could not queue the raw rendition of version %s", version.pk)
    version.raw_state = RawState.PENDING
    rendition_check(version)
