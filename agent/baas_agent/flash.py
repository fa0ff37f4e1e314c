"""Write one image onto a disk.

Contract: :func:`write_image` leaves the target holding exactly the image,
verified by reading it back, or raises :class:`~baas_agent.instructions.FlashError`:
an image whose bytes do not match is never reported as written. A target that
already holds the image (checked, not assumed; :mod:`baas_agent.check`) is not
rewritten. With the version's data map (:mod:`diskimage.datamap`,
:mod:`diskimage.verify`) both checks read and hash only the data. With a
``delta`` (:mod:`baas_agent.delta`), a disk that still holds the recorded version
gets only the ranges that differ; one that does not is flashed in full, and the
log says why. Its start is announced to the server (:mod:`baas_agent.progress`)
before anything is downloaded or written.

Syncing a disk back is :mod:`baas_agent.syncback`; the instructions and the errors
are :mod:`baas_agent.instructions`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baas_agent.check import disk_mismatch, fetch_map
from baas_agent.client import ApiError, Client
from baas_agent.disks import (
    DiskMap,
    RangeWriter,
    SparseWriter,
    drop_cached,
    is_block_device,
    target_size,
    to_medium,
)
from baas_agent.instructions import FlashError, WriteInstruction
from baas_agent.progress import Beside, Reporter
from diskimage.datamap import DataMap
from diskimage.verify import Verifier

# landing, delta and compress's functions are imported where they are used, not at
# start-up: a re-flash of an unchanged disk needs none of them, and the agent's start-up
# is a large part of that re-flash.

log = logging.getLogger(__name__)


def _fits(target: Path, size: int) -> bool:
    """A file target of exactly ``size`` bytes, or a block device of at least that."""
    available = target_size(target)
    if available is None or available < size:
        return False
    return available == size or not target.is_file()


def write_image(
    client: Client, instruction: WriteInstruction, disks: DiskMap, report: Reporter
) -> dict[str, Any]:
    """Flash one image; returns its ``written`` entry for the result.

    With the version's data map, only data is written, read back and hashed
    (ranges in parallel), and zeros are checked where the disk holds data;
    without it, the whole image is hashed.
    """
    target = disks.target(instruction.disk)
    image, size = instruction.image, instruction.size
    fits = _fits(target, size)  # then the disk may hold it already: checked first
    # The start is announced beside the map's download and the check of the disk, and
    # known to the server before anything is downloaded or written, or the result sent.
    announced = report.announcing(image, "verifying" if fits else "writing", size)
    try:
        return _write_image(client, instruction, target, report, fits, announced)
    finally:
        announced.join()


def _write_image(
    client: Client,
    instruction: WriteInstruction,
    target: Path,
    report: Reporter,
    fits: bool,
    announced: Beside,
) -> dict[str, Any]:
    image, size, sha256 = instruction.image, instruction.size, instruction.sha256
    datamap = fetch_map(client, instruction.map_url, size, sha256, instruction.inline_map)
    verifying = report.phase(image, "verifying", size)
    writing = report.phase(image, "writing", size)
    delta, data_url = instruction.delta, instruction.data_url
    if fits and datamap is not None and delta is not None and data_url is not None:
        from baas_agent.delta import write_delta

        why = write_delta(
            client,
            data_url,
            target,
            datamap,
            delta,
            label=instruction.label(),
            writing=writing,
            verifying=verifying,
            announced=announced,
        )
        if why is None:
            return _written(instruction)
        log.warning("%s: %s: writing it in full", instruction.label(), why)
    elif fits:
        why = disk_mismatch(target, size, sha256, datamap, verifying, fast=True)
        if why is None:
            log.info("%s: already there (checked), not rewritten", instruction.label())
            return _written(instruction)
        log.info("%s: not on the disk as it is (%s)", instruction.label(), why)
    announced.join()
    log.info("%s: writing %d bytes to %s", instruction.label(), size, target)
    started = time.monotonic()
    reason: str | None = NO_DATA_STREAM
    if datamap is not None and instruction.data_url is not None:
        reason = _write_data(client, instruction, target, datamap, writing, verifying)
    if reason is NO_DATA_STREAM:
        # One check of record: what is on the disk afterwards. It catches a corrupt
        # download as surely as hashing the stream would, and hashing is the costliest
        # step of a flash, so it is done once, not twice.
        _stream_to(client, instruction, target, writing)
        drop_cached(target)  # what is checked is the medium, not the page cache
        reason = disk_mismatch(target, size, sha256, datamap, verifying)
    if reason is not None:
        raise FlashError(
            f"SHA-256 mismatch on {instruction.disk} after writing {instruction.label()}: {reason}"
        )
    log.info("%s: written and verified in %.1f s", instruction.label(), time.monotonic() - started)
    return _written(instruction)


NO_DATA_STREAM = "no data stream"


def can_land(encoding: str) -> bool:
    """Whether the data stream lands range by range on every core (baas_agent.landing)."""
    from baas_agent.landing import can_land as landing_can_land

    return landing_can_land(encoding)


def _write_data(
    client: Client,
    instruction: WriteInstruction,
    target: Path,
    datamap: DataMap,
    writing: Callable[[int], None],
    verifying: Callable[[int], None],
) -> str | None:
    """Write from the version's data stream (its ranges alone), verifying as ranges land.

    Returns None when the disk holds the image, what differs otherwise, or
    NO_DATA_STREAM when the server has no data stream for this version.
    Ranges are decompressed, written, read back and hashed on a pool of
    threads beside the download (:mod:`baas_agent.landing`); without the
    zstandard module the stream is decompressed in order and each range is
    hashed back as it is written. The gaps are checked for zeros at the end.
    """
    info: dict[str, str] = {}
    chunks = client.download(str(instruction.data_url), info=info)
    try:
        first = next(chunks, b"")
    except ApiError as exc:
        if exc.status != 404:
            raise
        log.info("%s: no data stream (%s); downloading the whole image", instruction.label(), exc)
        return NO_DATA_STREAM
    encoding = "zstd" if info.get("content-type") == "application/zstd" else "none"
    log.info("%s: writing its %d data bytes", instruction.label(), datamap.data_bytes)
    stream = itertools.chain([first], chunks)
    if can_land(encoding):  # range by range, on every core
        from baas_agent.landing import land

        return land(stream, encoding, target, datamap, progress=writing)
    from baas_agent.compress import decompressed

    block_device = is_block_device(target)
    ranges = [(start, end) for start, end, _ in datamap.ranges]
    writer = RangeWriter(target, instruction.size, ranges)
    with writer, Verifier(target, datamap, sparse=not block_device) as verifier:

        def landed(index: int) -> None:
            start, end, _ = datamap.ranges[index]
            to_medium(writer.fd, start, end - start)  # read back from the disk, not memory
            verifier.check_range(index)

        writer.on_range = landed
        for chunk in decompressed(stream, encoding):
            writer.write(chunk)
            writing(writer.position)
        writer.close()
        verifier.check_gaps()
        return verifier.result(verifying)


def _stream_to(
    client: Client, instruction: WriteInstruction, target: Path, progress: Callable[[int], None]
) -> None:
    """Download, decompress and write sparse (the caller verifies what was written)."""
    from baas_agent.compress import decompressed

    download = client.download(instruction.url, expected_size=instruction.stored_size)
    with SparseWriter(target, instruction.size) as writer:
        for chunk in decompressed(download, instruction.compression):
            writer.write(chunk)
            progress(writer.position)
        writer.close()


def _written(instruction: WriteInstruction) -> dict[str, Any]:
    return {
        "image": instruction.image,
        "version": instruction.version,
        "disk": instruction.disk,
        "sha256": instruction.sha256,
    }
