"""The stages an upload's bytes go through, on the threads of one :class:`Stages` group.

::

    feeding thread    bytes as sent ─► [sha256 of the bytes as sent]   (compressed uploads)
                                    ─► pending file, as sent             (Storing.AS_SENT*)
                                    ─► decoder ─► RawStage ─► [sha256 of the raw image]
    "map" thread                                          ─► MapStage (data map, zero scan)
    "write" thread                                                    ─► WriteStage (sparse)

The decoder and :class:`RawStage` run on the thread that reads the body;
what follows them runs on threads of their own (:mod:`catalogue.stages`), so
decoding, hashing, mapping and writing overlap. A stage that fails fails the
group: the next hand-off on the feeding thread raises its error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from catalogue.exceptions import BadUpload, InsufficientStorage
from catalogue.services.uploads.checks import RawInspector
from catalogue.services.uploads.plan import HEAD_BYTES, UploadPlan
from catalogue.stages import BackgroundHasher, Stages
from catalogue.storage import PendingFile, StorageFull
from diskimage import CHUNK, ZERO_CHUNK, ZEROS, DecodeError
from diskimage.datamap import DataMap, DataMapper
from diskimage.decoders import IdentityDecoder, decoder_for
from diskimage.zstdframes import ZstdFrameWalker

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Drain:
    """Put through the map and write stages: set once every item put before it was done
    (a checkpoint of an upload decoded over several requests waits for it)."""

    def __init__(self) -> None:
        self._done = threading.Event()

    def done(self) -> None:
        self._done.set()

    def wait(self, stages: Stages) -> None:
        """Return once done; raise what a stage raised if one failed meanwhile."""
        while not self._done.wait(0.05):
            stages.check()
            if not stages.running:
                raise RuntimeError("The upload's stages were cancelled during a checkpoint.")


def storage_call(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``function(*args, **kwargs)``, a full disk answered as 507."""
    try:
        return function(*args, **kwargs)
    except StorageFull as exc:
        raise InsufficientStorage() from exc


class WriteStage:
    """The pending file: raw pieces of data at their offsets, on the "write" thread (holes
    stay holes), or the bytes as sent, in order, on the feeding thread."""

    def __init__(self, stages: Stages, pending: PendingFile):
        self._pending = pending
        self._stage = stages.start(self._write, name="write")

    def put_at(self, piece: memoryview, offset: int) -> None:
        """On the "map" thread: a view of bytes that never change (received, or the mapper's)."""
        self._stage.put((piece, offset))

    def drain(self, drain: Drain) -> None:
        self._stage.put(drain)

    def append(self, data: bytes) -> None:
        storage_call(self._pending.write, data)

    def join(self) -> None:
        self._stage.join()

    def _write(self, item: tuple[memoryview, int] | Drain) -> None:
        if isinstance(item, Drain):
            item.done()
            return
        storage_call(self._pending.write_at, *item)


class MapStage:
    """On the "map" thread: finds where the data is (4 KiB blocks that are not zeros),
    hashes it by range, and hands the data alone to the writer."""

    def __init__(
        self,
        stages: Stages,
        plan: UploadPlan,
        writer: WriteStage,
        check_quota: Callable[[], None],
    ):
        self._plan = plan
        self._check_quota = check_quota
        self._writer = writer
        # Without the whole-image hash now, the ranges' SHA-256s wait for the digest job.
        self._mapper = DataMapper(
            on_data=None if plan.keeps_as_sent else writer.put_at, sha256=plan.sha256_now
        )
        self._stage = stages.start(self._map, name="map")

    def put(self, item: bytes | int | Drain) -> None:
        """Raw bytes, the length of a run of zeros, or a :class:`Drain`."""
        self._stage.put(item)

    def finish(self) -> DataMap:
        """Wait for the queued pieces, then end the map (this hands on the last piece)."""
        self._stage.join()
        return self._mapper.finish("")

    def state(self) -> dict[str, Any]:
        """The map's state; only once a :class:`Drain` put last is done."""
        return self._mapper.state()

    def restore(self, state: dict[str, Any], read: Callable[[int, int], Iterator[bytes]]) -> None:
        self._mapper.restore(state, read)

    def _map(self, item: bytes | int | Drain) -> None:
        if isinstance(item, Drain):
            if self._plan.keeps_as_sent:
                item.done()
            else:
                self._writer.drain(item)  # done once what this stage handed on is written
            return
        if isinstance(item, int):
            self._mapper.skip(item)
            return
        self._mapper.update(item)
        if not self._plan.keeps_as_sent:
            self._check_quota()  # per decoded piece: a small body may unpack to gigabytes


class RawStage:
    """On the feeding thread: the decoder's raw output. Pieces of zeros become holes (checked
    while still in the cache), the rest is counted, checked, hashed and handed to the map."""

    def __init__(
        self,
        stages: Stages,
        plan: UploadPlan,
        inspector: RawInspector,
        mapping: MapStage,
    ):
        self._plan = plan
        self._inspector = inspector
        self._mapping = mapping
        self._hasher = BackgroundHasher(stages=stages) if plan.sha256_now else None
        self._hole = 0  # zeros since the last data, not handed on yet

    def data(self, data: bytes) -> None:
        if len(data) <= CHUNK and ZERO_CHUNK.startswith(data):
            self.hole(len(data))  # the mapping thread gets its length, not bytes to read again
            return
        if self._hole:
            self.flush()
        self._count(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self._mapping.put(data)

    def hole(self, length: int) -> None:
        """``length`` zero bytes that never became bytes (a zstd block of zeros, a sparse
        image's "don't care" chunk), or a piece of zeros taken off the socket."""
        self._hole += length
        self._count(ZEROS[: min(length, HEAD_BYTES)], length)

    def flush(self) -> None:
        """Hand the zeros since the last data on: one hole, however many blocks made it."""
        length, self._hole = self._hole, 0
        if not length:
            return
        if self._hasher is not None:
            for start in range(0, length, CHUNK):
                self._hasher.update(ZEROS[: min(CHUNK, length - start)])
        self._mapping.put(length)

    def sha256(self) -> str:
        """The whole image's SHA-256; empty when it was left to the digest job."""
        return self._hasher.hexdigest() if self._hasher is not None else ""

    def state(self) -> dict[str, Any]:
        """Zeros not handed on yet, and whether the whole image is still being hashed."""
        return {"hole": self._hole, "hashing": self._hasher is not None}

    def restore(self, state: dict[str, Any], hashed: Iterator[bytes]) -> None:
        """Go on from :meth:`state`; ``hashed``: the bytes the map was handed before it (the
        hash's state is not kept: it is computed again from them, when it still runs)."""
        self._hole = int(state["hole"])
        if not state["hashing"] and self._hasher is not None:
            self._hasher.close()
            self._hasher = None
        if self._hasher is not None:
            for piece in hashed:
                self._hasher.update(piece)

    def _count(self, head: bytes | memoryview, length: int | None = None) -> None:
        self._inspector.count(head, length)
        limit = self._plan.sha256_limit
        if self._hasher is not None and limit is not None and self._inspector.size > limit:
            self._hasher.close()  # too large to wait for: left to the digest job
            self._hasher = None


class WireStage:
    """On the feeding thread: the bytes as sent. Hashed (for a digest of the compressed bytes),
    kept as sent if the plan says so, and decoded, or only followed frame by frame."""

    def __init__(
        self,
        stages: Stages,
        plan: UploadPlan,
        inspector: RawInspector,
        raw: RawStage,
        writer: WriteStage,
    ):
        self._plan = plan
        self._inspector = inspector
        self._writer = writer
        self._hasher = BackgroundHasher(stages=stages) if plan.wire_sha256 else None
        if plan.decodes:
            # Not hashing it all now, the decoder leaves the frame checksums (XXH64 of every
            # byte, zeros included) to the job that hashes it all later, and skips the zeros.
            self.decoder: Any = decoder_for(
                plan.encoding, raw.data, raw.hole, checksum=plan.sha256_now
            )
        else:
            self.decoder = ZstdFrameWalker(inspector.add)

    def write(self, data: bytes) -> None:
        if self._hasher is not None:
            self._hasher.update(data)
        if self._plan.keeps_as_sent:
            self._writer.append(data)
        if not self._plan.decodes and not self._inspector.standard_checked:
            self._inspector.probe_zstd(data)
        try:
            self.decoder.write(data)
        except DecodeError as exc:
            raise BadUpload(f"{exc} Nothing was stored.") from exc

    def state(self) -> dict[str, Any]:
        """The decoder's state, for a checkpoint of an upload decoded over several requests:
        only a plan that keeps nothing as sent and hashes nothing as sent has one."""
        if self._plan.keeps_as_sent or self._hasher is not None:
            raise ValueError("This upload keeps or hashes its bytes as sent: no checkpoint.")
        if isinstance(self.decoder, IdentityDecoder):
            return {}
        take = getattr(self.decoder, "state", None)
        if take is None:  # zlib's and zstd's states live in C objects that cannot be saved
            raise ValueError(f"A {self._plan.encoding} stream cannot be checkpointed.")
        state: dict[str, Any] = take()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        if state:
            self.decoder.restore(state)

    def finish(self) -> None:
        try:
            self.decoder.finish()
        except DecodeError as exc:
            raise BadUpload(f"{exc} Nothing was stored.") from exc

    def sha256(self) -> str:
        return self._hasher.hexdigest() if self._hasher is not None else ""
