"""How files under the image root are named: the one place that spells them.

``<root>/<image uuid>/<n>.img[.gz|.zst]`` is version n's file; beside it
``<n>.map.json`` (its data map), ``<n>.raw`` and ``<n>.raw.map.json`` (a qcow2
version's raw rendition and its map); ``.<random>[suffix].part`` is a file being
written; ``<root>/.locks/<image uuid>`` holds the background jobs' locks.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

SUFFIXES = {"none": ".img", "gzip": ".img.gz", "zstd": ".img.zst"}
MAP_SUFFIX = ".map.json"  # a version's data map (diskimage.datamap), beside its file
# A qcow2 version's raw rendition (catalogue.services.renditions) and its map, beside its file.
RAW_SUFFIX = ".raw"
RAW_MAP_SUFFIX = ".raw.map.json"
PART_SUFFIX = ".part"
# A file of version n: ``<n>.img[.gz|.zst]``, or beside it (``<n>.map.json``, ``<n>.raw``…).
_NUMBERED = re.compile(r"^(\d+)(\..+)$")
_COMPRESSION_OF = {suffix: compression for compression, suffix in SUFFIXES.items()}
# One lock file per image, outside the image directories, whose byte n is held (shared)
# by every background job working on version n: a job whose process died holds nothing.
LOCKS_DIR = ".locks"


# A resumable upload's bytes as sent (``catalogue.storage.resumable.ResumablePart``):
# ``.upload-<token>.part``, owned by its row, not by a live writer: the stale purge skips it.
RESUMABLE_PREFIX = ".upload-"


def resumable_part_name(token: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", token):
        raise ValueError(f"not an upload token: {token!r}")
    return f"{RESUMABLE_PREFIX}{token}{PART_SUFFIX}"


def part_name(suffix: str = "") -> str:
    """A new name for a file being written (``suffix``: what it will be, for a person)."""
    return f".{uuid.uuid4().hex}{suffix}{PART_SUFFIX}"


@dataclass(frozen=True)
class StoredName:
    """A file under the root, read from its name (see :meth:`LocalStorage.stored_entries`)."""

    image: str  # the name of its image's directory
    name: str  # its own name
    number: int | None  # the version it is of or beside (``<n>.…``); None: no version's
    compression: str | None  # a version's own file (``<n>.img…``): in which compression
    part: bool  # a ``.part`` file: a write in progress, or a dead writer's debris


def parsed_name(image: str, name: str) -> StoredName:
    numbered = _NUMBERED.match(name)
    return StoredName(
        image=image,
        name=name,
        number=int(numbered[1]) if numbered else None,
        compression=_COMPRESSION_OF.get(numbered[2]) if numbered else None,
        part=name.endswith(PART_SUFFIX),
    )
