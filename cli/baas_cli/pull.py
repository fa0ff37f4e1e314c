"""``baas image pull``: a version written as a sparse file from its data map and data stream.

The map (``GET …/<n>/map``) says where the data is, with a SHA-256 per range;
the data stream (``…/<n>/data``) is those ranges' bytes alone, zstd frames or
raw. Only the data crosses the network and reaches the disk: the target is
made the image's size with nothing allocated, and each range is written at
its place and checked against the map on a pool of threads
(:class:`diskimage.verify.Verifier`) while the next ones arrive.

Resumable: a state file beside the target (``.<name>.baas-pull``) records
how many ranges are written and checked, and where the stream stood then.
The next run checks those ranges again, asks the stream from there
(``Range`` with ``If-Range``), and goes on. ``--raw`` and ``--zst`` fetch the
stored bytes (the raw disk, or the stored ``.zst``), resumable the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baas_cli.client import Api, check
from baas_cli.errors import ApiError, LocalError
from diskimage.datamap import DataMap
from diskimage.holes import is_zeros
from diskimage.verify import Verifier

CHECKPOINT_SECONDS = 1.0
MAP_WAIT = 120.0


@dataclass
class PullReport:
    say: Callable[[str], None]
    on_received: Callable[[int], None]
    set_total: Callable[[int], None]


def state_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.baas-pull")


class Pull:
    def __init__(
        self, api: Api, image: dict[str, Any], number: int, target: Path, report: PullReport
    ) -> None:
        self.api, self.image, self.number, self.target, self.report = (
            api,
            image,
            number,
            target,
            report,
        )
        self.base = f"/api/image/{image['uuid']}/{number}"
        self.state_file = state_path(target)
        self.received = 0
        self.limit_rate = 0  # bytes per second, 0: as fast as the link goes

    # --- State ----------------------------------------------------------------------------

    def _load_state(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if {k: state.get(k) for k in identity} != identity or not self.target.exists():
            return None
        return dict(state)

    def _save(self, state: dict[str, Any]) -> None:
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.state_file)

    # --- The sparse pull -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        datamap = self._map()
        identity = {
            "mode": "map",
            "image": str(self.image["uuid"]),
            "version": self.number,
            "size": datamap.size,
            "sha256": datamap.sha256,
        }
        state = self._load_state(identity)
        done = self._recheck(state, datamap) if state else 0
        if state is not None and state.get("done") and not done:
            self.report.say("A range written before differs now: starting over.")
        if state is None or done == 0:
            state = {**identity, "done": 0, "offset": 0, "etag": None}
            self._fresh(datamap.size)
        else:
            self.report.say(f"Resuming: {done} of {len(datamap.ranges)} ranges are here.")
        resumed_ranges = state["done"]
        verified = self._verifiable(datamap)
        fd = os.open(self.target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            with Verifier(self.target, datamap) as verifier:
                self._stream(fd, datamap, state, verifier if verified else None)
                reason = verifier.result() if verified else None
            if reason:
                raise LocalError(f"The download does not match the image's map: {reason}.")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.state_file.unlink(missing_ok=True)
        if not verified:
            self.report.say(
                "The server has not computed this version's checksums yet: "
                "the ranges were not checked."
            )
        return {
            "image": str(self.image["uuid"]),
            "version": self.number,
            "file": str(self.target),
            "size": datamap.size,
            "data_bytes": datamap.data_bytes,
            "received": self.received,
            "resumed_ranges": resumed_ranges,
            "ranges": len(datamap.ranges),
            "verified": verified,
        }

    def _map(self) -> DataMap:
        deadline = time.monotonic() + MAP_WAIT
        while True:
            response = self.api.http.get(f"{self.base}/map")
            if response.status_code == 404 and response.headers.get("retry-after"):
                if time.monotonic() > deadline:
                    check(response)
                self.report.say("The server is building this version's data map; waiting.")
                time.sleep(min(5.0, float(response.headers["retry-after"])))
                continue
            check(response)
            try:
                return DataMap.loads(response.content)
            except (ValueError, KeyError, TypeError) as exc:
                raise LocalError(f"The server's data map is not one: {exc}") from exc

    @staticmethod
    def _verifiable(datamap: DataMap) -> bool:
        return all(digest for _, _, digest in datamap.ranges)

    def _recheck(self, state: dict[str, Any], datamap: DataMap) -> int:
        """How many of the ranges the state says are done still hash right."""
        done = int(state.get("done", 0))
        if not done or not self._verifiable(datamap):
            return done
        with Verifier(self.target, datamap) as verifier:
            for index in range(done):
                verifier.check_range(index)
            return done if verifier.result() is None else 0

    def _fresh(self, size: int) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        with open(self.target, "wb") as file:
            file.truncate(size)

    def _stream(
        self, fd: int, datamap: DataMap, state: dict[str, Any], verifier: Verifier | None
    ) -> None:
        ranges = datamap.ranges
        if state["done"] >= len(ranges):
            return
        if state["done"] and not state["offset"]:  # no data stream last time either
            return self._whole(fd, datamap, state, verifier)
        headers = {}
        if state["offset"] and state.get("etag"):
            headers = {"Range": f"bytes={state['offset']}-", "If-Range": state["etag"]}
        with self.api.http.stream("GET", f"{self.base}/data", headers=headers) as response:
            if response.status_code == 404:
                response.read()
                return self._whole(fd, datamap, state, verifier)
            check(response)
            if response.status_code == 200 and state["offset"]:
                self.report.say("The version's data changed on the server: starting over.")
                state.update(done=0, offset=0)
            state["etag"] = response.headers.get("etag")
            self.report.set_total(int(response.headers.get("content-length", 0)))
            zstd = response.headers.get("content-type", "").startswith("application/zstd")
            chunks = self._counted(response.iter_raw(1 << 20))
            decoded = _Frames(chunks, state["offset"]) if zstd else _Plain(chunks, state["offset"])
            self._write_ranges(fd, datamap, state, verifier, decoded)
        return None

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        began = time.monotonic()
        for chunk in chunks:
            self.received += len(chunk)
            self.report.on_received(len(chunk))
            if self.limit_rate:
                ahead = self.received / self.limit_rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
            yield chunk

    def _write_ranges(
        self,
        fd: int,
        datamap: DataMap,
        state: dict[str, Any],
        verifier: Verifier | None,
        decoded: _Decoded,
    ) -> None:
        ranges, index = datamap.ranges, state["done"]
        start, end, _ = ranges[index]
        position = start
        last_checkpoint = time.monotonic()
        for data in decoded:
            view = memoryview(data)
            while view:
                step = min(len(view), end - position)
                os.pwrite(fd, view[:step], position)
                view, position = view[step:], position + step
                if position < end:
                    continue
                if verifier is not None:
                    verifier.check_range(index)
                index += 1
                if decoded.at_boundary(view) and time.monotonic() - last_checkpoint > 1.0:
                    self._checkpoint(state, index, decoded.offset(view), verifier)
                    last_checkpoint = time.monotonic()
                if index == len(ranges):
                    if view or decoded.more():
                        raise LocalError("The server sent more data than the map describes.")
                    state["done"] = index
                    return
                start, end, _ = ranges[index]
                position = start
        raise LocalError("The data stream ended early: run the same command again to resume.")

    def _checkpoint(
        self, state: dict[str, Any], done: int, offset: int, verifier: Verifier | None
    ) -> None:
        """Record progress, once what it claims has been checked."""
        if verifier is not None:
            reason = verifier.result()
            if reason:
                raise LocalError(f"The download does not match the image's map: {reason}.")
        state.update(done=done, offset=offset)
        self._save(state)

    def _whole(
        self, fd: int, datamap: DataMap, state: dict[str, Any], verifier: Verifier | None
    ) -> None:
        """No data stream (a version stored gzip): the raw image, its data ranges kept."""
        start = datamap.ranges[state["done"]][0]
        headers = {"Range": f"bytes={start}-"} if start else {}
        with self.api.http.stream(
            "GET", self.base, params={"decompress": 1}, headers=headers
        ) as response:
            check(response)
            self.report.set_total(int(response.headers.get("content-length", 0)))
            wanted = _RangesOf(self._counted(response.iter_raw(1 << 20)), datamap, start)
            self._write_ranges(fd, datamap, state, verifier, wanted)


class _Decoded:
    """The data ranges' bytes in order, knowing where in the stream each range ends."""

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError

    def at_boundary(self, rest: memoryview) -> bool:
        return True

    def offset(self, rest: memoryview) -> int:
        raise NotImplementedError

    def more(self) -> bool:
        return False


class _Plain(_Decoded):
    def __init__(self, chunks: Iterator[bytes], offset: int) -> None:
        self.chunks, self.position = chunks, offset

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.position += len(chunk)
            yield chunk

    def offset(self, rest: memoryview) -> int:
        return self.position - len(rest)


class _Frames(_Decoded):
    """A zstd stream decoded frame by frame: a checkpoint is only ever at a frame's end."""

    def __init__(self, chunks: Iterator[bytes], offset: int) -> None:
        import zstandard

        self.chunks, self.consumed = chunks, offset
        self.zstd = zstandard.ZstdDecompressor()
        self.boundary = True
        self.pending = b""

    def __iter__(self) -> Iterator[bytes]:
        decoder = self.zstd.decompressobj()
        for chunk in self.chunks:
            data = chunk
            while data:
                self.boundary = False
                out = decoder.decompress(data)
                used = len(data) - len(decoder.unused_data) if decoder.eof else len(data)
                self.consumed += used
                data = data[used:]
                if decoder.eof:
                    decoder = self.zstd.decompressobj()
                    self.boundary = True
                    if out:
                        yield out
                    continue
                if out:
                    yield out

    def at_boundary(self, rest: memoryview) -> bool:
        return self.boundary and not rest

    def offset(self, rest: memoryview) -> int:
        return self.consumed


class _RangesOf(_Decoded):
    """The raw image from ``start`` on, reduced to the map's ranges."""

    def __init__(self, chunks: Iterator[bytes], datamap: DataMap, start: int) -> None:
        self.chunks, self.datamap, self.position = chunks, datamap, start

    def __iter__(self) -> Iterator[bytes]:
        ranges = [(s, e) for s, e, _ in self.datamap.ranges if e > self.position]
        index = 0
        for chunk in self.chunks:
            begin, self.position = self.position, self.position + len(chunk)
            while index < len(ranges) and ranges[index][0] < self.position:
                low, high = max(begin, ranges[index][0]), min(self.position, ranges[index][1])
                if high > low:
                    yield chunk[low - begin : high - begin]
                if ranges[index][1] > self.position:
                    break
                index += 1

    def offset(self, rest: memoryview) -> int:
        return 0  # the raw image is asked again from the next range's start


# --- The stored bytes: --raw and --zst ---------------------------------------------------


def pull_stored(
    api: Api, image: dict[str, Any], number: int, target: Path, *, raw: bool, report: PullReport
) -> dict[str, Any]:
    """The raw image (zero blocks left as holes) or the stored file, resumable by Range."""
    path = f"/api/image/{image['uuid']}/{number}"
    params = {"decompress": 1} if raw else {}
    state_file = state_path(target)
    identity = {"mode": "raw" if raw else "stored", "image": str(image["uuid"]), "version": number}
    state: dict[str, Any] | None = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        state = json.loads(state_file.read_text())
    if not state or {k: state.get(k) for k in identity} != identity or not target.exists():
        state = {**identity, "offset": 0, "etag": None}
    offset = int(state["offset"])
    headers = {"Range": f"bytes={offset}-", "If-Range": state["etag"]} if offset else {}
    received = 0
    with api.http.stream("GET", path, params=params, headers=headers) as response:
        check(response)
        if not raw and "zstd" not in response.headers.get("content-type", ""):
            raise LocalError("This version is not stored zstd-compressed: pull it without --zst.")
        if response.status_code == 200:
            offset = 0
        elif offset:
            report.say(f"Resuming from byte {offset}.")
        state["etag"] = response.headers.get("etag")
        report.set_total(int(response.headers.get("content-length", 0)))
        mode = os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC)
        fd = os.open(target, mode | os.O_CLOEXEC, 0o644)
        try:
            last = time.monotonic()
            for chunk in response.iter_raw(1 << 20):
                if not (raw and is_zeros(chunk)):
                    os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                received += len(chunk)
                report.on_received(len(chunk))
                if time.monotonic() - last > CHECKPOINT_SECONDS:
                    os.ftruncate(fd, max(offset, os.fstat(fd).st_size))
                    state["offset"] = offset
                    _write_state(state_file, state)
                    last = time.monotonic()
            os.ftruncate(fd, offset)
            os.fsync(fd)
        except Exception as exc:
            if not _is_http_error(exc):
                raise
            state["offset"] = offset
            _write_state(state_file, state)
            raise LocalError(f"The download broke ({exc}): run it again to resume.") from exc
        finally:
            os.close(fd)
    state_file.unlink(missing_ok=True)
    return {
        "image": str(image["uuid"]),
        "version": number,
        "file": str(target),
        "size": offset,
        "received": received,
    }


def _write_state(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state))
    os.replace(temporary, path)


def latest_number(image: dict[str, Any]) -> int:
    numbers = [v["number"] for v in image.get("versions") or []]
    if not numbers:
        raise ApiError(404, f"The image {image['name']} has no version.")
    return int(max(numbers))


def _is_http_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.HTTPError)
