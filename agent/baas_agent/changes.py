"""Delta sync-back: a disk brought back as its changes against the version it was flashed with.

The disk held version ``b`` of the image when it was flashed (the sync
instruction's ``version``, with its ``map_url`` and ``hashes_url``). The agent
maps the disk (:func:`diskimage.changes.disk_map`), asks the server for the
block hashes of the base ranges that no longer match, and uploads only the
blocks that differ, as a delta (:mod:`diskimage.sparsedelta`) with
``Upload-Base-Version: b`` and ``Upload-Map-Digest`` — the map the server's
composed version must have, or it stores nothing (docs/agent-protocol.md §4).

:func:`sync_changes` returns the server's answer (the new version), None
when the disk holds the base unchanged, or raises :class:`FullSync` when a
delta cannot be sent (no BLAKE3 here, the server refused it): the caller then
brings the whole disk back, as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from baas_agent.client import ApiError, Client, DeploymentOver
from diskimage import BLOCK
from diskimage import changes as diskchanges
from diskimage import sparsedelta as deltas
from diskimage.datamap import DataMap
from diskimage.selection import format_selection
from diskimage.sparse import MEDIA_TYPE
from diskimage.sparsedelta import HASH_BYTES

log = logging.getLogger(__name__)
URL_INDICES = 300  # range indices per hashes request: its URL stays short
# Answers after which a whole upload may still work: the delta or its base was refused.
REFUSALS = frozenset({400, 404, 411, 415})
# Set (to anything) in the agent's environment: disks always go back whole, as before deltas
# (bench/syncback.py measures that way against this one).
WHOLE_SYNC = "BAAS_AGENT_WHOLE_SYNC"


class FullSync(Exception):
    """A delta cannot be sent; the message says why. Bring the whole disk back."""


def sync_changes(
    client: Client,
    *,
    target: Path,
    base: DataMap,
    base_version: int,
    upload_url: str,
    hashes_url: str,
    label: str,
    verifying: Callable[[int], None],
    syncing: Callable[[int], None],
    block_device: bool,
) -> Any | None:
    """Upload ``target``'s changes against ``base``; the answer, or None if unchanged."""
    if os.environ.get(WHOLE_SYNC):
        raise FullSync(f"{WHOLE_SYNC} is set")
    if not deltas.available() or base.blake3 is None:
        raise FullSync("this agent or the base's map has no BLAKE3 to compare ranges")
    if base.size % BLOCK:
        raise FullSync(f"the image's size is not a whole number of {BLOCK}-byte blocks")
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        started = time.monotonic()
        found = diskchanges.disk_map(fd, base.size, sparse=not block_device, progress=verifying)
        digest = deltas.map_digest(found)
        if digest == deltas.map_digest(base):
            log.info("%s: skipped, the disk is unchanged (by its data map)", label)
            return None
        mapped = time.monotonic()
        suspect = diskchanges.suspects(base, found)
        hashes = fetch_hashes(client, hashes_url, base, suspect)
        fetched = time.monotonic()
        runs = diskchanges.changed_runs(fd, base, found, suspect, hashes)
        length = deltas.delta_length(runs, base.size)
        log.info(
            "%s: %d bytes changed in %d runs (%d of %d ranges touched); sending a %d-byte "
            "delta against v%d (disk mapped in %.2f s, block hashes fetched in %.2f s, "
            "compared in %.2f s)",
            label,
            diskchanges.changed_bytes(runs),
            len(runs),
            len(suspect),
            len(base.ranges),
            length,
            base_version,
            mapped - started,
            fetched - mapped,
            time.monotonic() - fetched,
        )
        headers = {
            "Content-Type": MEDIA_TYPE,
            "Upload-Base-Version": str(base_version),
            "Upload-Map-Digest": digest,
        }

        def body() -> Iterator[bytes]:
            return _counted(deltas.delta_stream(runs, base.size, _reader(fd)), syncing)

        try:
            return client.upload(upload_url, body, headers=headers, length=length)
        except DeploymentOver:
            raise
        except ApiError as exc:
            if exc.status in REFUSALS:
                raise FullSync(f"the server refused the delta ({exc})") from exc
            raise
    finally:
        os.close(fd)


def fetch_hashes(client: Client, url: str, base: DataMap, indices: list[int]) -> dict[int, bytes]:
    """The base's block hashes of its ranges ``indices``; ranges the server gives none for
    are left out (their data is then sent whole)."""
    found: dict[int, bytes] = {}
    for batch in _batches(indices):
        sizes = [-(-(base.ranges[i][1] - base.ranges[i][0]) // BLOCK) * HASH_BYTES for i in batch]
        try:
            data = b"".join(client.download(f"{url}?ranges={format_selection(batch)}"))
        except DeploymentOver:
            raise
        except ApiError as exc:
            log.warning("no block hashes from %s (%s): the changed ranges go whole", url, exc)
            return found
        if len(data) != sum(sizes):
            log.warning("the block hashes from %s have the wrong length; ranges go whole", url)
            return found
        position = 0
        for index, size in zip(batch, sizes, strict=True):
            found[index] = data[position : position + size]
            position += size
    return found


def _batches(indices: list[int]) -> Iterator[list[int]]:
    for at in range(0, len(indices), URL_INDICES):
        yield indices[at : at + URL_INDICES]


def _reader(fd: int) -> Callable[[int, int], bytes]:
    return lambda start, end: os.pread(fd, end - start, start)


def _counted(chunks: Iterator[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        progress(done)
