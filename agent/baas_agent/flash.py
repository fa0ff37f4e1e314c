"""Write one image onto a disk, or sync one disk back as an image's next version.

Contracts:

- :func:`write_image` leaves the target holding exactly the image, verified by
  reading it back, or raises :class:`FlashError`: an image whose bytes do not
  match is never reported as written. A target that already holds the image
  (checked, not assumed) is not rewritten. With the version's data map
  (:mod:`diskimage.datamap`, :mod:`diskimage.verify`) both checks read and hash only the data.
  With a ``delta`` (:mod:`baas_agent.delta`), a disk that still holds the
  recorded version gets only the ranges that differ; one that does not is
  flashed in full, and the log says why.
- :func:`sync_image` uploads a disk only when it differs from what was
  flashed: when the server takes them, only the changes against the flashed
  version (:mod:`baas_agent.changes`); else the whole disk, zstd-compressed and
  with a ``Content-Digest`` of the raw bytes. Returns the new version, or None
  when the disk is unchanged.
- Progress goes to the server at most once a second per image.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from baas_agent.client import ApiError, Client, DeploymentOver
from baas_agent.compress import COMPRESSIONS
from baas_agent.disks import (
    DiskMap,
    RangeWriter,
    SparseWriter,
    drop_cached,
    hash_target,
    is_block_device,
    read_target,
    target_size,
    to_medium,
)
from diskimage.datamap import DataMap
from diskimage.verify import Verifier, mismatch

if TYPE_CHECKING:
    from baas_agent.delta import DeltaInstruction

# landing, delta, changes and compress's functions are imported where they are used,
# not at start-up: a re-flash of an unchanged disk needs none of them, and the agent's
# start-up is a large part of that re-flash.

log = logging.getLogger(__name__)
_T = TypeVar("_T")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FlashError(Exception):
    """A step failed; the message is the reason reported to the server."""


class InstructionError(FlashError):
    """The server's instructions are malformed."""


def _field(data: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InstructionError(f"instruction field {name!r} is missing or not {kind.__name__}")
    return value


def _sha256(data: dict[str, Any]) -> str:
    value = _field(data, "sha256", str).lower()
    if not SHA256_HEX.fullmatch(value):
        raise InstructionError(f"instruction field 'sha256' is not a SHA-256: {value!r}")
    return value


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InstructionError(f"instruction field {name!r} is not str")
    return value


@dataclass(frozen=True)
class WriteInstruction:
    image: str
    version: int
    disk: str
    url: str
    size: int
    sha256: str
    compression: str
    stored_size: int | None = None
    map_url: str | None = None
    data_url: str | None = None
    delta: DeltaInstruction | None = None
    inline_map: dict[str, Any] | None = None  # what map_url answers, sent along ("map")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WriteInstruction:
        compression = data.get("compression", "none")
        if compression not in COMPRESSIONS:
            raise InstructionError(f"unknown compression {compression!r}")
        stored = data.get("stored_size")
        delta = None
        if data.get("delta") is not None:
            from baas_agent.delta import DeltaError, DeltaInstruction

            try:
                delta = DeltaInstruction.from_json(data["delta"])
            except DeltaError as exc:  # the disk is then flashed in full: nothing is lost
                log.warning("image %s: its delta is unusable (%s)", data.get("image"), exc)
        return cls(
            image=_field(data, "image", str),
            version=_field(data, "version", int),
            disk=_field(data, "disk", str),
            url=_field(data, "url", str),
            size=_field(data, "size", int),
            sha256=_sha256(data),
            compression=compression,
            stored_size=stored if isinstance(stored, int) else None,
            map_url=_optional_str(data, "map_url"),
            data_url=_optional_str(data, "data_url"),
            delta=delta,
            inline_map=data["map"] if isinstance(data.get("map"), dict) else None,
        )

    def label(self) -> str:
        return f"image {self.image} v{self.version} on {self.disk}"


@dataclass(frozen=True)
class SyncInstruction:
    image: str
    disk: str
    version: int
    size: int
    sha256: str
    upload_url: str
    map_url: str | None = None
    hashes_url: str | None = None  # the server takes the changes against ``version``

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncInstruction:
        return cls(
            image=_field(data, "image", str),
            disk=_field(data, "disk", str),
            version=_field(data, "version", int),
            size=_field(data, "size", int),
            sha256=_sha256(data),
            upload_url=_field(data, "upload_url", str),
            map_url=_optional_str(data, "map_url"),
            hashes_url=_optional_str(data, "hashes_url"),
        )

    def label(self) -> str:
        return f"image {self.image} (flashed v{self.version}) from {self.disk}"


class Reporter:
    """Posts ``/api/agent/progress``, at most once per ``interval`` per image.

    Progress is best effort: a failed post is logged and forgotten, never
    retried, so a slow server cannot stall a flash.
    """

    def __init__(
        self,
        client: Client | None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, image: str, phase: str, done: int, total: int) -> None:
        now = self.clock()
        last = self._last.get(image)
        if last is not None and now - last < self.interval:
            return
        self._last[image] = now
        if self.client is None:
            return
        body = {"image": image, "phase": phase, "bytes_done": done, "bytes_total": total}
        try:
            self.client.call("POST", "/api/agent/progress", body, retries=0)
        except DeploymentOver:
            raise  # cancelled: stop writing now
        except ApiError as exc:
            log.debug("progress not sent: %s", exc)

    def announce(self, image: str, phase: str, total: int) -> None:
        """Tell the server an image's work begins, retried, unlike the routine reports.

        The server records an image as written or brought back only if it saw
        progress for it, and an empty image (a disk of zeros) may otherwise
        never produce any.
        """
        self._last[image] = self.clock()
        if self.client is None:
            return
        body = {"image": image, "phase": phase, "bytes_done": 0, "bytes_total": total}
        try:
            self.client.call("POST", "/api/agent/progress", body)
        except DeploymentOver:
            raise
        except ApiError as exc:
            log.warning("%s: the server did not take the start of %s: %s", image, phase, exc)

    def announcing(self, image: str, phase: str, total: int) -> _Beside:
        """:meth:`announce` on a thread of its own, beside the work that follows (the
        data map's download, the disk's check): join the result before the work's end."""
        self._last[image] = self.clock()  # no routine report before it, from now on
        return _Beside(lambda: self.announce(image, phase, total))

    def phase(self, image: str, phase: str, total: int) -> Callable[[int], None]:
        """A ``done -> None`` callback for one image and phase."""
        return lambda done: self(image, phase, done, total)


class _Beside:
    """A call run on a thread beside the caller's work; :meth:`join` waits for it and
    raises what it raised."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._succeeded = False
        self._call = call
        self._thread = threading.Thread(target=self._run, name="beside", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._call()
            self._succeeded = True
        except BaseException as exc:  # handed to the joining thread
            self._error = exc

    def wait(self) -> bool:
        """Wait for the call; whether it returned (what it raised is left for :meth:`join`)."""
        self._thread.join()
        return self._succeeded

    def join(self) -> None:
        """Wait for the call (again: at once) and raise what it raised (once)."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


# -- write ---------------------------------------------------------------------------


def _fits(target: Path, size: int) -> bool:
    """A file target of exactly ``size`` bytes, or a block device of at least that."""
    available = target_size(target)
    if available is None or available < size:
        return False
    return available == size or not target.is_file()


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


def _check(
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
    announced: _Beside,
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
    elif fits and _check(target, size, sha256, datamap, verifying, fast=True) is None:
        log.info("%s: already there (checked), not rewritten", instruction.label())
        return _written(instruction)
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
        reason = _check(target, size, sha256, datamap, verifying)
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


# -- sync ----------------------------------------------------------------------------


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
    image, size = instruction.image, instruction.size
    report.announce(image, "verifying", size)  # it checks the disk first
    verifying = report.phase(image, "verifying", size)
    datamap = fetch_map(client, instruction.map_url, size, instruction.sha256)
    if datamap is not None and instruction.hashes_url:
        from baas_agent.changes import FullSync, sync_changes

        try:  # only the changes against the flashed version (agent/baas_agent/changes.py)
            answer = sync_changes(
                client,
                target=target,
                base=datamap,
                base_version=instruction.version,
                upload_url=instruction.upload_url,
                hashes_url=instruction.hashes_url,
                label=instruction.label(),
                verifying=verifying,
                syncing=report.phase(image, "syncing", size),
                block_device=is_block_device(target),
            )
            return None if answer is None else _synced(instruction, answer, None)
        except FullSync as exc:
            log.warning("%s: %s; bringing the whole disk back", instruction.label(), exc)
    unchanged = datamap is not None and not _check(
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
    syncing = report.phase(image, "syncing", size)
    headers = {"Content-Type": "application/octet-stream", "Content-Digest": content_digest(digest)}

    def compressed() -> Iterator[bytes]:
        from baas_agent.compress import zstd_compressed

        return zstd_compressed(_reporting(read_target(target, size), syncing))

    def raw() -> Iterator[bytes | memoryview]:
        return _reporting(read_target(target, size), syncing)

    try:
        answer = client.upload(
            instruction.upload_url, compressed, headers={**headers, "Content-Encoding": "zstd"}
        )
    except ApiError as exc:
        if exc.status != 411:
            raise
        # A server that cannot take a chunked body (no Content-Length): the raw size is known.
        log.warning("%s: chunked upload refused, sending it uncompressed", instruction.label())
        answer = client.upload(instruction.upload_url, raw, headers=headers, length=size)
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
    return {"image": instruction.image, "version": answer["version"]}


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
