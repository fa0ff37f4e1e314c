"""Uploading a new version: stream, check, hash, then commit under the next number.

The HTTP layer (``catalogue.apis.uploads``) feeds the bytes as they arrive into
a :class:`VersionReceiver`, which

* stores a large zstd upload of a raw image as sent (past the inline hashing
  limit, with no digest wanted now): only its frame headers are read, for its
  size, and its first bytes decoded, for the file standard check; the digest
  job decodes, checks and maps it, and the compression job lays it out in
  frames (``compression.needs_frames``);
* decodes them if they come compressed (zstd or gzip, declared or recognised
  by their magic, or an Android sparse image, ``catalogue.sparseimage``), in
  pieces of at most 1 MiB whatever the ratio; zstd block
  by block (``catalogue.zstdblocks``), its blocks of zeros reaching the map
  and the sparse writer as holes, never as bytes. Its frame checksums are
  checked at once when the whole image is hashed now, else left to the job
  that hashes it (stored in the map until then);
* maps where the raw bytes' data is (``catalogue.datamap``, stored beside the
  version: every range of data with its SHA-256, the upload's own check);
* hashes the whole raw image (SHA-256) on a thread of its own, beside the
  I/O — up to ``BAAS_UPLOAD_INLINE_SHA256_MAX`` raw bytes, or all of it when
  the client sends or asks for a digest; past that the answer comes without
  waiting for it and a job records it (``catalogue.services.digests``);
* refuses, as soon as it knows, data that is not the image's file standard
  (a qcow2 image takes only qcow2 data, without a backing file; a raw image
  never qcow2 data), data larger than BAAS_MAX_IMAGE_SIZE, and data that
  would take its owner past their storage quota (``lifecycle.QuotaGuard``);
* writes into a pending file in the image's directory: the upload's own
  bytes for a gzip image sent gzip or a zstd upload stored as sent, else the
  raw bytes, sparse. A compression job
  rewrites the latter later (zstd in frames of the version's data map).

:func:`version_upload` then checks the expected digest, fsyncs, and — under a
lock on the image row — picks the next number, puts the file in place and
creates the row. Any failure before that leaves nothing but a ``.part`` file
that is removed at once (or, after a crash, by the stale-upload purge).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from dataclasses import dataclass, replace
from typing import Any

import zstandard
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from rest_framework.exceptions import PermissionDenied

from accounts import rules
from accounts.services import audit_record
from catalogue.exceptions import BadUpload, InsufficientStorage, UploadTooLarge
from catalogue.models import Compression, FileStandard, Image, ImageType, Version
from catalogue.services.bootfiles import BootImageError, boot_files_extract
from catalogue.services.compression import DECODE_ERRORS, VersionCorrupt
from catalogue.services.datamaps import version_map_store
from catalogue.services.digests import file_digest, version_digest_ensure, version_digest_schedule
from catalogue.services.lifecycle import quota_guard_for, versions_prune_schedule
from catalogue.services.renditions import rendition_schedule
from catalogue.storage import (
    PendingFile,
    StorageFull,
    StoredFile,
    get_storage,
    is_disk_full,
)
from catalogue.streaming import BackgroundHasher, BackgroundWorker
from diskimage import CHUNK, ZEROS, DecodeError
from diskimage import sparse as sparseimage
from diskimage.datamap import DataMap, DataMapper
from diskimage.decoders import QCOW2_HEADER, SPARSE, decoder_for, qcow2_header, sniff_encoding
from diskimage.zstdframes import ZstdFrameWalker

QEMU_IMG = "qemu-img"
PROBE_MAX = 1 << 20  # bytes as sent decoded for the first raw bytes of a zstd stored as sent
HEAD_BYTES = QCOW2_HEADER.size  # enough to recognise compression and read a qcow2 header
# qemu-img check: 0 clean, 3 only leaked clusters (harmless); anything else is a broken image.
QEMU_CHECK_OK = (0, 3)


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

    The request's thread reads and decodes; mapping and writing the raw bytes
    run on a thread of their own, so the two overlap on two cores.
    """

    def __init__(
        self,
        *,
        image: Image,
        max_size: int,
        digest: bool = False,
        wire_digest: bool = True,
        raw_at_least: int = 0,
    ):
        self.image = image
        self.max_size = max_size
        self.encoding: str | None = None
        self.pending: PendingFile | None = None
        self.size = 0
        self._head = b""  # wire bytes held back until the encoding is known
        self._raw_head = b""  # first raw bytes, until the file standard is checked
        self._standard_checked = False
        self._virtual_size = 0
        self._decoder: Any = None
        self._hasher: BackgroundHasher | None = None
        self._wire_hasher: BackgroundHasher | None = None
        self._wire_digest = wire_digest
        self._digest_limit = None if digest else settings.BAAS_UPLOAD_INLINE_SHA256_MAX
        self._raw_at_least = raw_at_least
        self._mapping: BackgroundWorker | None = None
        self._writing: BackgroundWorker | None = None
        self._hole = 0  # zeros decoded as a hole since the last data, not handed on yet
        self._mapper = DataMapper()
        self._store_compressed = False
        self._as_sent = False  # a large zstd upload stored as sent (see _start)
        self._probe = b""  # its first bytes as sent, to decode its first raw bytes from
        self._decoded: DataMap | None = None  # it, decoded back (see _decode_back)
        self._done = False
        self._quota = quota_guard_for(image)  # None: the owner has no quota

    def __enter__(self) -> VersionReceiver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    # --- Receiving ---------------------------------------------------------------

    def declare_encoding(self, encoding: str | None) -> None:
        """``none``, ``gzip`` or ``zstd`` as the client declared it; None to recognise it."""
        self.encoding = encoding

    def write(self, data: bytes) -> None:
        """Take the next bytes as sent. Raises BadUpload, UploadTooLarge, InsufficientStorage."""
        if self._decoder is None:
            self._head += data
            if len(self._head) < HEAD_BYTES:
                return
            data, self._head = self._head, b""
            self._start(data)
        self._receive(data)
        self._check_quota()

    def _check_quota(self) -> None:
        """413 as soon as the pending file takes more on disk than the owner's quota leaves."""
        if self._quota is not None and self.pending is not None:
            self._quota.check_stored(self.pending.path)

    def _start(self, head: bytes) -> None:
        if self.encoding is None:
            self.encoding = sniff_encoding(head)
        announced = sparseimage.declared_size(head) if self.encoding == SPARSE else None
        if announced is not None and announced > self.max_size:
            raise UploadTooLarge(
                f"The sparse image's header announces {announced} bytes, more than the "
                f"{self.max_size}-byte limit; nothing was stored."
            )
        # gzip comes stored as sent; zstd is stored raw first, for the compression job
        # to write it in frames of its data map (catalogue.seekable).
        self._store_compressed = self.encoding == Compression.GZIP == self.image.compression
        if not self._too_large_to_hash(head):
            self._hasher = BackgroundHasher()
        if self._wire_digest and self.encoding != Compression.NONE:
            self._wire_hasher = BackgroundHasher()
        # A large zstd upload of a raw image, whose SHA-256 is left to a job anyway, is stored
        # as sent: that job decodes it (checking its frame checksums), maps it, and has it
        # laid out in frames. Only its frame headers are read now, for its size.
        self._as_sent = self._hasher is None and self._zstd_as_sent(head)
        if self._as_sent:
            self._store_compressed = True
            self._decoder = ZstdFrameWalker(self._on_frame_size)
        else:
            # Not hashing it all now, the decoder leaves the frame checksums (XXH64 of every
            # byte, zeros included) to the job that hashes it all later, and skips the zeros.
            self._decoder = decoder_for(
                self.encoding, self._on_raw, self._on_hole, checksum=self._hasher is not None
            )
        # The map's scan for zero blocks also tells the sparse writer where the data is.
        # Without the whole-image hash now, the ranges' SHA-256s wait for the digest job.
        self._mapper = DataMapper(
            on_data=None if self._store_compressed else self._write_data,
            sha256=self._hasher is not None,
        )
        self._mapping = BackgroundWorker(self._map, name="map", depth=8)
        # Writing has a thread of its own: the scan and the range hashes of one piece
        # overlap the copy of the one before into the page cache.
        self._writing = BackgroundWorker(self._write, name="write", depth=8)
        self.pending = _storage_call(
            get_storage().open_write, self.image.uuid, sparse=not self._store_compressed
        )

    def _zstd_as_sent(self, head: bytes) -> bool:
        """Whether this upload can be stored as sent: zstd for a raw image, its first frame
        telling its size (a frame that does not is decoded back at the end)."""
        if self.encoding != Compression.ZSTD or self.image.file_standard != FileStandard.RAW:
            return False
        try:
            return zstandard.frame_content_size(head) > 0
        except zstandard.ZstdError:
            return False

    def _on_frame_size(self, size: int) -> None:
        """A stored-as-sent zstd frame's content size, from its header (checked by the job)."""
        self.size += size
        if self.size > self.max_size:
            raise UploadTooLarge(
                f"The image is larger than the {self.max_size}-byte limit; nothing was stored."
            )

    def _probe_raw_head(self, data: bytes) -> None:
        """Decode the first raw bytes of a zstd upload stored as sent, for the file standard
        check: only as many as needed, from at most PROBE_MAX bytes as sent."""
        self._probe += data[: PROBE_MAX - len(self._probe)]
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(self._probe), read_across_frames=True
        )
        try:
            self._raw_head = reader.read(HEAD_BYTES)
        except zstandard.ZstdError as exc:
            raise BadUpload(f"The zstd data is corrupt: {exc} Nothing was stored.") from exc
        if len(self._raw_head) >= HEAD_BYTES or len(self._probe) >= PROBE_MAX:
            self._check_standard()

    def _too_large_to_hash(self, head: bytes) -> bool:
        """Whether the image is known to exceed the inline hashing limit from the start."""
        if self._digest_limit is None:
            return False
        declared = 0
        if self.encoding == Compression.ZSTD:  # the frame's content size, checked when decoded
            with contextlib.suppress(zstandard.ZstdError):
                declared = zstandard.frame_content_size(head)
        elif self.encoding == SPARSE:  # the header's, checked when decoded
            declared = sparseimage.declared_size(head) or 0
        return max(self._raw_at_least, declared) > self._digest_limit

    def _receive(self, data: bytes) -> None:
        if self.encoding != Compression.NONE:
            if self._wire_hasher is not None:
                self._wire_hasher.update(data)
            if self._store_compressed:
                _storage_call(self.pending.write, data)
            if self._as_sent and not self._standard_checked:
                self._probe_raw_head(data)
        try:
            self._decoder.write(data)
        except DecodeError as exc:
            raise BadUpload(f"{exc} Nothing was stored.") from exc

    def _on_raw(self, data: bytes) -> None:
        if len(data) <= CHUNK and ZEROS.obj.startswith(data):
            # A piece of zeros, checked while it is still in the cache from the socket:
            # the mapping thread gets its length, not the bytes to read again.
            self._on_hole(len(data))
            return
        if self._hole:
            self._flush_hole()
        self._count(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self._mapping.put(data)

    def _on_hole(self, length: int) -> None:
        """``length`` zero bytes, not handed on as bytes: a zstd block of zeros that was
        never written out, or a piece of zeros taken off the socket."""
        self._hole += length
        self._count(ZEROS[: min(length, HEAD_BYTES)], length)

    def _flush_hole(self) -> None:
        """Hand the zeros since the last data on: one hole, however many blocks made it."""
        length, self._hole = self._hole, 0
        if self._hasher is not None:
            for start in range(0, length, CHUNK):
                self._hasher.update(ZEROS[: min(CHUNK, length - start)])
        self._mapping.put(length)

    def _count(self, head: bytes | memoryview, length: int | None = None) -> None:
        """Count raw bytes that arrived: the size limit, the file standard, the hash limit."""
        self.size += len(head) if length is None else length
        if self.size > self.max_size:
            raise UploadTooLarge(
                f"The image is larger than the {self.max_size}-byte limit; nothing was stored."
            )
        if not self._standard_checked:
            self._raw_head += bytes(head[:HEAD_BYTES])
            if len(self._raw_head) >= HEAD_BYTES:
                self._check_standard()
        limit = self._digest_limit
        if self._hasher is not None and limit is not None and self.size > limit:
            self._hasher.close()  # too large to wait for: left to the digest job
            self._hasher = None

    def _map(self, data: bytes | int) -> None:
        """On the mapping thread: find the data, hash it by range, write it sparse."""
        if isinstance(data, int):
            self._mapper.skip(data)
            return
        self._mapper.update(data)
        if not self._store_compressed:
            self._check_quota()  # per decoded piece: a small body may unpack to gigabytes

    def _write_data(self, piece: memoryview, offset: int) -> None:
        """On the mapping thread: hand a piece of data on to the writing thread (it is a
        view of bytes that never change: the received ones, or the mapper's own)."""
        self._writing.put((piece, offset))

    def _write(self, item: tuple[memoryview, int]) -> None:
        _storage_call(self.pending.write_at, *item)

    def _check_standard(self) -> None:
        """A qcow2 image takes qcow2 data without a backing file; a raw one never qcow2."""
        self._standard_checked = True
        header = qcow2_header(self._raw_head)
        if self.image.file_standard == FileStandard.QCOW2:
            if header is None:
                raise BadUpload("This is a qcow2 image, but the data is not qcow2 (no QFI magic).")
            if header.backing_file_offset:
                raise BadUpload("qcow2 files with a backing file are not accepted; flatten it.")
            self._virtual_size = header.virtual_size
            if header.virtual_size > settings.BAAS_MAX_IMAGE_SIZE:
                raise UploadTooLarge(
                    f"The qcow2 file describes a disk of {header.virtual_size} bytes, more than "
                    f"the {settings.BAAS_MAX_IMAGE_SIZE}-byte limit; nothing was stored."
                )
        elif header is not None:
            raise BadUpload(
                "This is a raw image, but the data is a qcow2 file: convert it with "
                "'qemu-img convert -O raw', or create a qcow2 image."
            )
        elif sparseimage.is_sparse_image(self._raw_head):
            raise BadUpload(
                "This is a raw image, but the data decodes to an Android sparse image: send "
                "the sparse image itself, uncompressed (it has no holes to compress)."
            )

    # --- Ending ------------------------------------------------------------------

    def finish(self, *, need_digest: bool = False) -> ReceivedUpload:
        """All bytes arrived: flush the decoder, run the last checks, return what arrived.

        ``need_digest``: the SHA-256 is needed now; if it was left to later, the
        pending file is read back for it.
        """
        self._end_of_input()
        self._mapping.join()
        mapped = self._mapper.finish("")  # writes the last piece of data
        self._writing.join()
        if not self._store_compressed:
            self.pending.extend_to(self.size)  # trailing zeros: a hole
        if not self._standard_checked:
            self._check_standard()
        self._check_crc32(mapped)
        self._check_quota()
        sha256 = self._hasher.hexdigest() if self._hasher is not None else ""
        wire_sha256 = self._wire_hasher.hexdigest() if self._wire_hasher is not None else ""
        checksums = getattr(self._decoder, "checksums", None) or None
        if self._decoded is not None:
            mapped, sha256 = self._decoded, self._decoded.sha256
        if need_digest and not sha256:
            mapped = self._pending_digest(checksums)
            if mapped.zstd_checksums != checksums:
                raise BadUpload(
                    "The zstd data does not decode to what it was compressed from (a frame "
                    "checksum differs): it was damaged on the way. Nothing was stored."
                )
            sha256, checksums = mapped.sha256, None
        if self.image.file_standard == FileStandard.QCOW2 and not self._store_compressed:
            self._virtual_size = self._qemu_check()
        return ReceivedUpload(
            size=self.size,
            sha256=sha256,
            wire_sha256=wire_sha256 if self.encoding != Compression.NONE else sha256,
            encoding=self.encoding,
            stored_compression=self.encoding if self._store_compressed else Compression.NONE,
            virtual_size=self._virtual_size if self._virtual_size else self.size,
            # Stored as sent and not decoded yet: the digest job maps it.
            datamap=None
            if self._as_sent and not sha256
            else replace(mapped, sha256=sha256, zstd_checksums=checksums),
        )

    def _end_of_input(self) -> None:
        """No more bytes come: decode what is held back, and refuse an empty image."""
        if self._decoder is None:
            if not self._head:
                raise BadUpload("The upload is empty.")
            head, self._head = self._head, b""
            self._start(head)
            self._receive(head)
        try:
            self._decoder.finish()
        except DecodeError as exc:
            raise BadUpload(f"{exc} Nothing was stored.") from exc
        if self._as_sent and not self._standard_checked:
            self._check_standard()  # an image of fewer than HEAD_BYTES bytes
        if self._as_sent and self._decoder.unknown:
            self._decode_back()
        if not self.size:
            raise BadUpload("The upload is empty: it decodes to an image of 0 bytes.")
        if self._hole:
            self._flush_hole()

    def _decode_back(self) -> None:
        """A zstd upload stored as sent had a frame that did not tell its size: decode the
        stored file now, for its size (and so its map and SHA-256 too)."""
        try:
            self._decoded = file_digest(self.pending.path, Compression.ZSTD, self.max_size)
        except VersionCorrupt as exc:
            raise UploadTooLarge(
                f"The image is larger than the {self.max_size}-byte limit; nothing was stored."
            ) from exc
        except DECODE_ERRORS as exc:
            raise BadUpload(f"The zstd data is corrupt: {exc} Nothing was stored.") from exc
        self.size = self._decoded.size

    def _check_crc32(self, mapped: DataMap) -> None:
        """A sparse image's CRC-32 chunks, checked against what was stored (its data alone)."""
        checks = getattr(self._decoder, "crc_checks", None)
        if not checks:
            return
        ranges = [(start, end) for start, end, _ in mapped.ranges]
        found = sparseimage.image_crc32(self.pending.path, ranges, [at for at, _ in checks])
        for at, expected in checks:
            if found[at] != expected:
                raise BadUpload(
                    f"The sparse image's CRC-32 of its first {at} bytes is {expected:08x}, but "
                    f"they are {found[at]:08x}: it was damaged on the way. Nothing was stored."
                )

    def _pending_digest(self, zstd_checksums: tuple[tuple[int, int, int], ...] | None) -> DataMap:
        """The map and SHA-256 of the raw image in the pending file (read back: mostly cached),
        with what the ranges of ``zstd_checksums`` hash to."""
        compression = self.encoding if self._store_compressed else Compression.NONE
        try:
            found = file_digest(self.pending.path, compression, self.size, zstd_checksums)
        except (VersionCorrupt, *DECODE_ERRORS) as exc:  # only data stored as sent
            raise BadUpload(
                f"The data does not decode to the image its headers announce ({exc}): it was "
                "damaged on the way. Nothing was stored."
            ) from exc
        if found.size != self.size:
            raise BadUpload(
                f"The zstd frames announce {self.size} bytes but hold {found.size}: the data "
                "was damaged on the way. Nothing was stored."
            )
        return found

    def _qemu_check(self) -> int:
        """qemu-img's verdict on the pending qcow2 file: its virtual size, or BadUpload."""
        # Trailing holes are only in the file's length after commit: extend it now.
        os.truncate(self.pending.path, self.pending.position)
        info = _qemu_img("info", "--output=json", "-f", "qcow2", str(self.pending.path))
        if info.returncode != 0:
            raise BadUpload(f"qemu-img cannot read this qcow2 file: {_stderr(info)}")
        check = _qemu_img("check", "-q", "-f", "qcow2", str(self.pending.path))
        if check.returncode not in QEMU_CHECK_OK:
            raise BadUpload(f"qemu-img check finds this qcow2 file broken: {_stderr(check)}")
        details = json.loads(info.stdout)
        if details.get("backing-filename") or details.get("format-specific", {}).get(
            "data", {}
        ).get("data-file"):
            raise BadUpload("qcow2 files that refer to other files are not accepted; flatten it.")
        return int(details["virtual-size"])

    def commit(self, number: int, compression: str) -> StoredFile:
        stored = _storage_call(self.pending.commit, number, compression)
        self._done = True
        return stored

    def abort(self) -> None:
        self._done = True
        for worker in (self._mapping, self._writing, self._hasher, self._wire_hasher):
            if worker is not None:
                worker.close()
        if self.pending is not None:
            self.pending.abort()


def _storage_call(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except StorageFull as exc:
        raise InsufficientStorage() from exc


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - a fixed program on our own file
        [QEMU_IMG, *args], capture_output=True, text=True, timeout=300, check=False
    )


def _stderr(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


# --- Committing -----------------------------------------------------------------------


def version_upload(
    *,
    actor: Any,
    image: Image,
    receiver: VersionReceiver,
    expected_sha256: str | None = None,
    note: str = "",
    same_as: Version | None = None,
) -> Version:
    """Finish ``receiver`` and store it as ``image``'s next version; return the version.

    ``expected_sha256`` (hex), when given, must equal the SHA-256 of the raw
    image or of the bytes as sent, else BadUpload and nothing is stored. Two
    uploads to one image get distinct, consecutive numbers: the number is
    chosen and the file put in place under a lock on the image's row. An
    agent's upload is noted with where it came from, and a retry of it (same
    bytes, same deployment) returns the version already made. Bytes identical
    to ``same_as`` store nothing and return ``same_as``.
    Raises PermissionDenied if ``actor`` may not write the image.
    """
    if not rules.can_write_image(actor, image):
        raise PermissionDenied("You may read this image but not upload to it.")
    if rules.is_agent(actor):
        note = actor.upload_note(image.pk)
    needed_now = bool(expected_sha256) or same_as is not None or rules.is_agent(actor)
    received = receiver.finish(need_digest=needed_now or image.type == ImageType.BOOT)
    _check_digest(received, expected_sha256)
    if same_as is not None:
        version_digest_ensure(same_as)
    if same_as is not None and (received.size, received.sha256) == (same_as.size, same_as.sha256):
        receiver.abort()  # the very bytes of that version: nothing new to store
        return same_as
    _fsync_path(receiver.pending.path)  # the slow part of durability, outside the lock
    placed: StoredFile | None = None
    try:
        with transaction.atomic():
            locked = Image.objects.select_for_update().get(pk=image.pk)
            if rules.is_agent(actor) and (same := _same_sync(locked, received, note)):
                receiver.abort()
                return same
            number = _next_free_number(locked)
            placed = receiver.commit(number, received.stored_compression)
            _check_boot_image(locked, placed, received)
            version = _version_row(locked, number, received, placed, actor, note)
            if received.datamap is not None:
                _storage_call(version_map_store, version, received.datamap)
    except BaseException:
        if placed is not None:  # the row never became visible: neither may the file
            placed.path.unlink(missing_ok=True)
        raise
    return version


def _same_sync(image: Image, received: ReceivedUpload, note: str) -> Version | None:
    """The version an agent already uploaded with these bytes, if this is a retry.

    An agent whose answer was lost (the connection broke after the commit)
    sends the same disk again: it gets the version it made, not a duplicate.
    """
    return Version.objects.filter(image=image, sha256=received.sha256, note=note).first()


def _check_boot_image(image: Image, placed: StoredFile, received: ReceivedUpload) -> None:
    """A boot image takes only a boot partition BAAS can boot (whose files are extracted now).

    Checked on the complete file in its place, before its row exists: a refusal
    removes it like any failed upload.
    """
    if image.type != ImageType.BOOT:
        return
    if image.file_standard != FileStandard.RAW:
        raise BadUpload("A boot image is a raw boot partition, not qcow2; nothing was stored.")
    try:
        if received.size > settings.BAAS_BOOT_IMAGE_MAX_SIZE:
            raise BootImageError(
                "A boot image is a small boot partition: at most "
                f"{settings.BAAS_BOOT_IMAGE_MAX_SIZE} bytes, not {received.size}."
            )
        boot_files_extract(
            image_uuid=image.uuid,
            sha256=received.sha256,
            path=placed.path,
            compression=received.stored_compression,
        )
    except BootImageError as exc:
        raise BadUpload(f"{exc} Nothing was stored.") from exc


def _check_digest(received: ReceivedUpload, expected: str | None) -> None:
    if expected and expected.lower() not in (received.sha256, received.wire_sha256):
        raise BadUpload(
            f"SHA-256 mismatch: you sent {expected.lower()}, the server received "
            f"{received.sha256}. Nothing was stored; upload again."
        )


def _fsync_path(path) -> None:
    """fsync through a descriptor of our own: Linux flushes the file's pages whoever wrote them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if is_disk_full(exc):  # delayed allocation may only fail now
            raise InsufficientStorage() from exc
        raise
    finally:
        os.close(fd)


def _next_free_number(image: Image) -> int:
    """max + 1 of the rows (never 0: that is the empty image). Files a crash left under that
    number without a row are debris: removed (logged), never a reason to skip a number.
    The caller holds the lock on the image's row."""
    latest = Version.objects.filter(image=image).aggregate(latest=Max("number"))["latest"] or 0
    number = latest + 1
    get_storage().clear_debris(image.uuid, number)
    return number


def _version_row(
    image: Image,
    number: int,
    received: ReceivedUpload,
    placed: StoredFile,
    actor: Any,
    note: str,
) -> Version:
    version = Version.objects.create(
        image=image,
        number=number,
        size=received.size,
        virtual_size=received.virtual_size,
        sha256=received.sha256,
        stored_size=placed.allocated,
        stored_compression=received.stored_compression,
        uploaded_by=actor if getattr(actor, "pk", None) else None,
        note=note,
    )
    audit_record(
        actor=actor,
        action="version.upload",
        target=version,
        image=str(image.uuid),
        number=number,
        size=received.size,
        sha256=received.sha256,
        encoding=received.encoding,
    )
    from catalogue.services.compression import compression_schedule_for_version

    # A compression job computes a large upload's SHA-256 in its own pass over the bytes;
    # without one to run, the digest job does.
    if not compression_schedule_for_version(version) and not version.sha256:
        version_digest_schedule(version)
    versions_prune_schedule(image)
    rendition_schedule(version)  # a qcow2 version: the raw disk agents write
    return version
