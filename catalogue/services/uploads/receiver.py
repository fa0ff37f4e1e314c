"""Receiving the bytes of one upload: a plan chosen from the first bytes, then its stages.

:class:`VersionReceiver` is what the HTTP layer (and a network mount's merge)
feeds: it holds the first bytes back until the plan can be chosen
(:func:`~catalogue.services.uploads.plan.plan_upload`), then builds the
stages the plan asks for (:mod:`catalogue.services.uploads.stages`), feeds
them, and at the end runs the checks that need the whole image
(:mod:`catalogue.services.uploads.checks`). Leaving its ``with`` block
without a commit cancels the stages and removes the pending file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from django.conf import settings

from catalogue.exceptions import BadUpload
from catalogue.models import Compression, FileStandard, Image
from catalogue.services.lifecycle import quota_guard_for
from catalogue.services.uploads import checks
from catalogue.services.uploads.plan import (
    HEAD_BYTES,
    Storing,
    UploadOptions,
    UploadPlan,
    plan_upload,
)
from catalogue.services.uploads.stages import (
    Drain,
    MapStage,
    RawStage,
    WireStage,
    WriteStage,
    storage_call,
)
from catalogue.stages import Stages
from catalogue.storage import PendingFile, StoredFile, get_storage
from diskimage import CHUNK
from diskimage.datamap import DataMap


@dataclass(frozen=True)
class ReceivedUpload:
    """What arrived: raw ``size`` and ``sha256``, and the SHA-256 of the bytes as sent.

    ``sha256`` is empty when it was left to the digest job; ``wire_sha256``
    when the bytes as sent were not hashed (nobody could ask for it).
    """

    size: int
    sha256: str
    wire_sha256: str
    encoding: str
    stored_compression: str
    virtual_size: int
    datamap: DataMap | None  # None: stored as sent, mapped by the digest job


class VersionReceiver:
    """Receives the bytes of one upload to ``image``. Use it as a context manager.

    ``declare_encoding`` may be called before the first ``write``; without it
    the encoding is recognised from the first bytes. ``finish`` ends the
    stream; :func:`version_upload` commits it. Leaving the ``with`` block any
    other way removes everything written.

    ``digest``: hash the whole raw image while it streams, however large (a
    digest was sent or asked for); else only up to BAAS_UPLOAD_INLINE_SHA256_MAX.
    ``wire_digest``: hash the bytes as sent, for a digest that may still come
    (a multipart field after the file) and may be of the compressed bytes.
    ``raw_at_least``: a lower bound of the raw size, from the request's length:
    past the inline limit, the whole-image hash is not even started.
    ``adopt``: a raw file on the store's filesystem holding these very bytes, moved in
    as the pending file (``LocalStorage.adopt``) instead of written again: the bytes
    fed are still read, checked, mapped and hashed, and the file is removed if the
    upload fails. Where it cannot be moved, or the plan keeps bytes as sent, the bytes
    are written as in any upload.
    ``pending``: the pending file to write the raw image into, owned by the caller (a
    resumable upload decoded over several requests, :mod:`.decoded`): :meth:`checkpoint`
    and :meth:`restore` then carry the receiver's state from one request to the next.
    """

    def __init__(
        self,
        *,
        image: Image,
        max_size: int,
        digest: bool = False,
        wire_digest: bool = True,
        raw_at_least: int = 0,
        adopt: Path | None = None,
        pending: PendingFile | None = None,
    ):
        self.image = image
        self.max_size = max_size
        self._options = UploadOptions(
            max_size=max_size,
            sha256_limit=None if digest else settings.BAAS_UPLOAD_INLINE_SHA256_MAX,
            wire_digest=wire_digest,
            raw_at_least=raw_at_least,
        )
        self._declared: str | None = None
        self._adopt = adopt
        self._pending = pending
        self._head = b""  # bytes as sent held back until the plan is chosen
        self._run: _Run | None = None
        self._done = False

    def __enter__(self) -> VersionReceiver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    @property
    def pending(self) -> PendingFile | None:
        return self._run.pending if self._run is not None else None

    @property
    def plan(self) -> UploadPlan | None:
        """The plan, once the first bytes chose it."""
        return self._run.plan if self._run is not None else None

    def declare_encoding(self, encoding: str | None) -> None:
        """``none``, ``gzip`` or ``zstd`` as the client declared it; None to recognise it."""
        self._declared = encoding

    def write(self, data: bytes) -> None:
        """Take the next bytes as sent. Raises BadUpload, UploadTooLarge, InsufficientStorage."""
        run = self._run
        if run is None:
            self._head += data
            if len(self._head) < HEAD_BYTES:
                return
            data, self._head = self._head, b""
            run = self._start(data)
        run.receive(data)

    def write_zeros(self, length: int) -> None:
        """``length`` zero bytes of a raw upload that were never read (a hole of the file
        they come from): counted, hashed and mapped as zeros, left a hole in the pending
        file. Where the plan takes bytes only (not chosen yet, or not a raw upload stored
        raw), they are written as bytes."""
        while length and (self._run is None or not self._run.takes_zeros):
            piece = min(length, CHUNK)
            self.write(bytes(piece))
            length -= piece
        if length:
            assert self._run is not None
            self._run.receive_zeros(length)

    def _start(self, head: bytes) -> _Run:
        plan = plan_upload(
            image=self.image, options=self._options, declared=self._declared, head=head
        )
        self._run = _Run(self.image, plan, adopt=self._adopt, pending=self._pending)
        return self._run

    def checkpoint(self) -> dict[str, Any]:
        """The state after every byte written so far, as plain values, once the pending file
        holds the raw image they decode to (up to the map's last whole block). The caller
        syncs the file, then records the state with the offset; :meth:`restore` goes on
        from it. Only for a plan that decodes to raw and keeps nothing as sent."""
        if self._run is None:
            return {"head": self._head.hex()}
        return self._run.checkpoint()

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from a :meth:`checkpoint` (of a receiver given the same pending file, now
        cut to the checkpoint's ``written``)."""
        if "plan" not in state:
            self._head = bytes.fromhex(state.get("head", ""))
            return
        self._run = _Run(self.image, UploadPlan.from_state(state["plan"]), pending=self._pending)
        self._run.restore(state)

    def finish(self, *, need_digest: bool = False) -> ReceivedUpload:
        """All bytes arrived: flush the decoder, run the last checks, return what arrived.

        ``need_digest``: the SHA-256 is needed now; if it was left to later, the
        pending file is read back for it.
        """
        run = self._run
        if run is None:
            if not self._head:
                raise BadUpload("The upload is empty.")
            head, self._head = self._head, b""
            run = self._start(head)
            run.receive(head)
        return run.finish(need_digest=need_digest)

    def commit(self, number: int, compression: str) -> StoredFile:
        pending = self.pending
        assert pending is not None  # committed after finish, which starts the upload
        stored = storage_call(pending.commit, number, compression)
        self._done = True
        return stored

    def abort(self) -> None:
        self._done = True
        if self._run is not None:
            self._run.abort()


class _Run:
    """One upload following its plan: the pending file, the stages, the inspector."""

    def __init__(
        self,
        image: Image,
        plan: UploadPlan,
        *,
        adopt: Path | None = None,
        pending: PendingFile | None = None,
    ):
        self.plan = plan
        self._image = image
        self._quota = quota_guard_for(image)  # None: the owner has no quota
        self.inspector = checks.RawInspector(
            file_standard=image.file_standard, max_size=plan.max_size
        )
        self._stages = Stages()
        adopted = pending
        if adopt is not None and not plan.keeps_as_sent:
            adopted = storage_call(get_storage().adopt, image.uuid, adopt)
        self.pending = adopted or storage_call(
            get_storage().open_write, image.uuid, sparse=not plan.keeps_as_sent
        )
        try:
            # Downstream first: each stage is handed to the one that feeds it.
            self._writer = WriteStage(self._stages, self.pending)
            self._mapping = MapStage(self._stages, plan, self._writer, self.check_quota)
            self._raw = RawStage(self._stages, plan, self.inspector, self._mapping)
            self._wire = WireStage(self._stages, plan, self.inspector, self._raw, self._writer)
        except BaseException:
            self.abort()
            raise

    def check_quota(self) -> None:
        """413 as soon as the pending file takes more on disk than the owner's quota leaves."""
        if self._quota is not None:
            self._quota.check_stored(self.pending.allocated())

    def receive(self, data: bytes) -> None:
        self._wire.write(data)
        self.check_quota()

    def checkpoint(self) -> dict[str, Any]:
        decoder = self._wire.state()  # refuses a plan that cannot be checkpointed
        drain = Drain()
        self._mapping.put(drain)
        drain.wait(self._stages)  # the map and the writer are idle: their state is whole
        return {
            "plan": self.plan.state(),
            "decoder": decoder,
            "inspector": self.inspector.state(),
            "raw": self._raw.state(),
            "map": self._mapping.state(),
            "written": self.pending.position,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._wire.restore(state["decoder"])
        self.inspector.restore(state["inspector"])
        mapped = state["map"]
        carry = bytes.fromhex(mapped["carry"])
        end = int(mapped["size"]) - len(carry)  # what the map was handed is in the file

        def handed() -> Iterator[bytes]:
            yield from self._read(0, end)
            yield carry

        self._raw.restore(state["raw"], handed())
        self._mapping.restore(mapped, self._read)

    def _read(self, start: int, end: int) -> Iterator[bytes]:
        """The raw image's bytes ``[start, end)`` from the pending file (holes as zeros)."""
        with open(self.pending.path, "rb") as file:
            while start < end:
                data = os.pread(file.fileno(), min(CHUNK, end - start), start)
                data += bytes(min(CHUNK, end - start) - len(data))  # past its end: zeros
                yield data
                start += len(data)

    @property
    def takes_zeros(self) -> bool:
        """Whether :meth:`receive_zeros` may be used: raw bytes as sent, stored raw."""
        plan = self.plan
        return (
            plan.encoding == Compression.NONE
            and plan.storing is Storing.RAW
            and not plan.wire_sha256
        )

    def receive_zeros(self, length: int) -> None:
        self._raw.hole(length)
        self.check_quota()

    def finish(self, *, need_digest: bool) -> ReceivedUpload:
        decoded = self._end_of_input()
        mapped = self._mapping.finish()  # writes the last piece of data
        self._writer.join()
        self.pending.flush()  # what the checks below read is in the file
        plan, inspector = self.plan, self.inspector
        if not plan.keeps_as_sent:
            self.pending.extend_to(inspector.size)  # trailing zeros: a hole
        if not inspector.standard_checked:
            inspector.check_standard()
        checks.check_crc32(
            self.pending.path, getattr(self._wire.decoder, "crc_checks", None), mapped
        )
        self.check_quota()
        sha256 = self._raw.sha256()
        wire_sha256 = self._wire.sha256()
        checksums = getattr(self._wire.decoder, "checksums", None) or None
        if decoded is not None:
            mapped, sha256 = decoded, decoded.sha256
        if need_digest and not sha256:
            mapped = checks.pending_digest(
                self.pending.path, plan.stored_compression, inspector.size, checksums
            )
            sha256, checksums = mapped.sha256, None
        virtual_size = inspector.virtual_size
        if self._image.file_standard == FileStandard.QCOW2 and not plan.keeps_as_sent:
            virtual_size = checks.qemu_check(self.pending.path, self.pending.position)
        return ReceivedUpload(
            size=inspector.size,
            sha256=sha256,
            wire_sha256=wire_sha256 if plan.wire_sha256 else sha256,
            encoding=plan.encoding,
            stored_compression=plan.stored_compression,
            virtual_size=virtual_size or inspector.size,
            # Stored undecoded and not decoded yet: the digest job maps it.
            datamap=None
            if plan.storing is Storing.AS_SENT_UNDECODED and not sha256
            else replace(mapped, sha256=sha256, zstd_checksums=checksums),
        )

    def _end_of_input(self) -> DataMap | None:
        """No more bytes come: end the decoder and refuse an empty image. Returns the map of a
        zstd upload stored undecoded whose frames did not all tell their size (decoded back)."""
        self._wire.finish()
        decoded = None
        undecoded = self.plan.storing is Storing.AS_SENT_UNDECODED
        if undecoded and not self.inspector.standard_checked:
            self.inspector.check_standard()  # an image of fewer than HEAD_BYTES bytes
        if undecoded and self._wire.decoder.unknown:
            self.pending.flush()
            decoded = checks.decode_back(self.pending.path, self.plan.max_size)
            self.inspector.size = decoded.size
        if not self.inspector.size:
            raise BadUpload("The upload is empty: it decodes to an image of 0 bytes.")
        self._raw.flush()
        return decoded

    def abort(self) -> None:
        """Stop every stage, then remove the pending file (nothing half-written stays)."""
        self._stages.cancel()
        self.pending.abort()
