"""Whether a disk holds an image: the version's data map, and the disk checked against it.

Contracts:

- :func:`fetch_map` returns the version's data map (:mod:`diskimage.datamap`), the
  one the instruction carried or the one its URL answers, or None when there is
  none or it is unusable: the caller then hashes the whole disk instead. Only
  :class:`DeploymentOver` is raised.
- :func:`disk_mismatch` returns None when the target holds the image, else what
  differs: by the map when there is one (only the data is read and hashed, the
  gaps checked for zeros; :mod:`diskimage.verify`), else by the SHA-256 of the
  whole image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baas_agent.client import ApiError, Client, DeploymentOver
from baas_agent.disks import hash_target, is_block_device
from diskimage.datamap import DataMap
from diskimage.verify import mismatch

log = logging.getLogger(__name__)


def fetch_map(
    client: Client, url: str | None, size: int, sha256: str, given: dict[str, Any] | None = None
) -> DataMap | None:
    """The version's data map, or None (then the whole image is hashed instead).

    ``given`` is the map as the instruction carried it: then ``url`` is not asked,
    unless the map is unusable.
    """
    if given is not None:
        try:
            return DataMap.from_json(given, size=size, sha256=sha256)
        except ValueError as exc:
            log.warning("the instruction's data map is unusable (%s): asking %s", exc, url)
    if url is None:
        return None
    try:
        return DataMap.from_json(client.get_json(url), size=size, sha256=sha256)
    except DeploymentOver:
        raise
    except ApiError as exc:
        log.info("no data map at %s (%s): checking the whole image instead", url, exc)
    except ValueError as exc:
        log.warning("the data map at %s is unusable (%s): checking the whole image", url, exc)
    return None


def disk_mismatch(
    target: Path,
    size: int,
    sha256: str,
    datamap: DataMap | None,
    progress: Callable[[int], None],
    *,
    fast: bool = False,
) -> str | None:
    """None if ``target`` holds the image, else what differs (by the map when there is one).

    ``fast`` lets the map's BLAKE3 stand in for SHA-256: for the question whether a
    disk still holds an image, not for the verification of a write.
    """
    if datamap is not None:
        sparse = not is_block_device(target)
        return mismatch(target, datamap, progress=progress, sparse=sparse, fast=fast)
    written = hash_target(target, size, progress=progress)
    if written != sha256:
        return f"expected SHA-256 {sha256}, read back {written}"
    return None
