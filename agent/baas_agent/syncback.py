"""Sync one disk back as the image's next version, unless it is unchanged.

Contract: :func:`sync_image` uploads a disk only when it differs from what was
flashed: when the server takes them, only the changes against the flashed
version (:mod:`baas_agent.changes`); else the whole disk, zstd-compressed and with
a ``Content-Digest`` of the raw bytes. It returns the ``synced`` entry of the
result (the new version), or None when the disk is unchanged, and raises
:class:`~baas_agent.instructions.FlashError` when the server's answer does not
record what the disk holds.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from baas_agent.check import disk_mismatch, fetch_map
from baas_agent.client import ApiError, Client
from baas_agent.disks import DiskMap, is_block_device, read_target
from baas_agent.instructions import FlashError, SyncInstruction
from baas_agent.progress import Reporter

# changes and compress's functions are imported where they are used, not with this
# module: an unchanged disk needs neither.

log = logging.getLogger(__name__)


def content_digest(digest: hashlib._Hash) -> str:
    """The RFC 9530 ``Content-Digest`` value of a SHA-256."""
    return f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"


def sync_image(
    client: Client, instruction: SyncInstruction, disks: DiskMap, report: Reporter
) -> dict[str, Any] | None:
    """Upload the disk as the image's next version unless unchanged; returns ``synced`` entry.

    The unchanged check reads only data when the flashed version's data map
    is there. A changed disk takes two passes: one hashes it (for the
    Content-Digest), the second streams it compressed.
    """
    target = disks.target(instruction.disk)
    image, size, disk = instruction.image, instruction.size, instruction.disk
    report.announce(image, "verifying", size, disk)  # it checks the disk first
    verifying = report.phase(image, "verifying", size, disk)
    datamap = fetch_map(client, instruction.map_url, size, instruction.sha256)
    if datamap is not None and instruction.hashes_url:
        from baas_agent.changes import FullSync, sync_changes

        try:  # only the changes against the flashed version (agent/baas_agent/changes.py)
            answer = sync_changes(
                client,
                target=target,
                base=datamap,
                base_version=instruction.version,
                upload_url=upload_url(instruction),
                hashes_url=instruction.hashes_url,
                label=instruction.label(),
                verifying=verifying,
                syncing=report.phase(image, "syncing", size, disk),
                block_device=is_block_device(target),
            )
            return None if answer is None else _synced(instruction, answer, None)
        except FullSync as exc:
            log.warning("%s: %s; bringing the whole disk back", instruction.label(), exc)
    unchanged = datamap is not None and not disk_mismatch(
        target, size, instruction.sha256, datamap, verifying, fast=True
    )
    if unchanged:
        log.info("%s: skipped, the disk is unchanged (by its data map)", instruction.label())
        return None
    digest = hashlib.sha256()
    for done, chunk in _counted(read_target(target, size)):
        digest.update(chunk)
        verifying(done)
    if digest.hexdigest() == instruction.sha256:
        log.info("%s: skipped, the disk is unchanged", instruction.label())
        return None
    log.info("%s: changed, uploading %d bytes compressed", instruction.label(), size)
    syncing = report.phase(image, "syncing", size, disk)
    headers = {"Content-Type": "application/octet-stream", "Content-Digest": content_digest(digest)}

    def compressed() -> Iterator[bytes]:
        from baas_agent.compress import zstd_compressed

        return zstd_compressed(_reporting(read_target(target, size), syncing))

    def raw() -> Iterator[bytes | memoryview]:
        return _reporting(read_target(target, size), syncing)

    try:
        answer = client.upload(
            upload_url(instruction), compressed, headers={**headers, "Content-Encoding": "zstd"}
        )
    except ApiError as exc:
        if exc.status != 411:
            raise
        # A server that cannot take a chunked body (no Content-Length): the raw size is known.
        log.warning("%s: chunked upload refused, sending it uncompressed", instruction.label())
        answer = client.upload(upload_url(instruction), raw, headers=headers, length=size)
    return _synced(instruction, answer, digest.hexdigest())


def _synced(instruction: SyncInstruction, answer: Any, sha256: str | None) -> dict[str, Any]:
    """The ``synced`` entry of an upload's answer; ``sha256`` (None for a delta, which the
    server checked against the disk's data map) must be what the server recorded."""
    if not isinstance(answer, dict) or not isinstance(answer.get("version"), int):
        raise FlashError(f"the upload of {instruction.label()} got no version back: {answer!r}")
    if sha256 is not None and answer.get("sha256", sha256) != sha256:
        raise FlashError(
            f"the server recorded SHA-256 {answer['sha256']} for {instruction.label()}, "
            f"the disk has {sha256}"
        )
    log.info("%s: uploaded as version %d", instruction.label(), answer["version"])
    return {"image": instruction.image, "version": answer["version"], "disk": instruction.disk}


def upload_url(instruction: SyncInstruction) -> str:
    """The entry's ``upload_url`` naming the disk brought back (``?disk=``): the server
    notes the version as that disk's (an older server ignores the parameter)."""
    joiner = "&" if "?" in instruction.upload_url else "?"
    return f"{instruction.upload_url}{joiner}{urlencode({'disk': instruction.disk})}"


def _counted(chunks: Iterable[bytes | memoryview]) -> Iterator[tuple[int, bytes | memoryview]]:
    done = 0
    for chunk in chunks:
        done += len(chunk)
        yield done, chunk


def _reporting(
    chunks: Iterable[bytes | memoryview], progress: Callable[[int], None]
) -> Iterator[bytes | memoryview]:
    for done, chunk in _counted(chunks):
        yield chunk
        progress(done)
