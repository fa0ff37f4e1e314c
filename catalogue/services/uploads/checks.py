"""The checks an upload must pass before anything is stored: size, file standard, integrity.

Each raises :class:`BadUpload` or :class:`UploadTooLarge` with a message the
uploader can act on; the caller then removes the pending file.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import zstandard
from django.conf import settings

from catalogue.exceptions import BadUpload, UploadTooLarge
from catalogue.models import Compression, FileStandard
from catalogue.services.compression import DECODE_ERRORS, VersionCorrupt
from catalogue.services.digests import file_digest
from catalogue.services.uploads.plan import HEAD_BYTES
from diskimage import sparse as sparseimage
from diskimage.datamap import DataMap
from diskimage.decoders import qcow2_header

QEMU_IMG = "qemu-img"
PROBE_MAX = 1 << 20  # bytes as sent decoded for the first raw bytes of a zstd stored as sent
# qemu-img check: 0 clean, 3 only leaked clusters (harmless); anything else is a broken image.
QEMU_CHECK_OK = (0, 3)


class RawInspector:
    """Counts the raw bytes as they come and checks them against the limit and the image's
    file standard (a qcow2 image takes only qcow2 data, without a backing file; a raw image
    never qcow2 data), as soon as enough of them arrived."""

    def __init__(self, *, file_standard: str, max_size: int):
        self._file_standard = file_standard
        self._max_size = max_size
        self.size = 0
        self.virtual_size = 0  # a qcow2 file's, from its header
        self._raw_head = b""  # first raw bytes, until the file standard is checked
        self._probe = b""  # the first bytes as sent of a zstd stored undecoded
        self.standard_checked = False

    def count(self, head: bytes | memoryview, length: int | None = None) -> None:
        """``length`` raw bytes arrived (``len(head)`` if None), starting with ``head``."""
        self.add(len(head) if length is None else length)
        if not self.standard_checked:
            self._raw_head += bytes(head[:HEAD_BYTES])
            if len(self._raw_head) >= HEAD_BYTES:
                self.check_standard()

    def state(self) -> dict[str, object]:
        """What was counted and checked, as plain values (an upload decoded over several
        requests: :mod:`.decoded`)."""
        return {
            "size": self.size,
            "virtual_size": self.virtual_size,
            "raw_head": self._raw_head.hex(),
            "standard_checked": self.standard_checked,
        }

    def restore(self, state: dict) -> None:
        self.size, self.virtual_size = int(state["size"]), int(state["virtual_size"])
        self._raw_head = bytes.fromhex(state["raw_head"])
        self.standard_checked = bool(state["standard_checked"])

    def add(self, length: int) -> None:
        """``length`` more raw bytes (a zstd frame's content size, from its header)."""
        self.size += length
        if self.size > self._max_size:
            raise UploadTooLarge(
                f"The image is larger than the {self._max_size}-byte limit; nothing was stored."
            )

    def probe_zstd(self, data: bytes) -> None:
        """Decode the first raw bytes of a zstd upload stored undecoded, for the file standard
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
            self.check_standard()

    def check_standard(self) -> None:
        """A qcow2 image takes qcow2 data without a backing file; a raw one never qcow2."""
        self.standard_checked = True
        header = qcow2_header(self._raw_head)
        if self._file_standard == FileStandard.QCOW2:
            if header is None:
                raise BadUpload("This is a qcow2 image, but the data is not qcow2 (no QFI magic).")
            if header.backing_file_offset:
                raise BadUpload("qcow2 files with a backing file are not accepted; flatten it.")
            self.virtual_size = header.virtual_size
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


def check_crc32(path: Path, checks: list[tuple[int, int]] | None, mapped: DataMap) -> None:
    """A sparse image's CRC-32 chunks, checked against what was stored (its data alone)."""
    if not checks:
        return
    ranges = [(start, end) for start, end, _ in mapped.ranges]
    found = sparseimage.image_crc32(path, ranges, [at for at, _ in checks])
    for at, expected in checks:
        if found[at] != expected:
            raise BadUpload(
                f"The sparse image's CRC-32 of its first {at} bytes is {expected:08x}, but "
                f"they are {found[at]:08x}: it was damaged on the way. Nothing was stored."
            )


def decode_back(path: Path, max_size: int) -> DataMap:
    """A zstd upload stored undecoded had a frame that did not tell its size: decode the
    stored file now, for its size (and so its map and SHA-256 too)."""
    try:
        return file_digest(path, Compression.ZSTD, max_size)
    except VersionCorrupt as exc:
        raise UploadTooLarge(
            f"The image is larger than the {max_size}-byte limit; nothing was stored."
        ) from exc
    except DECODE_ERRORS as exc:
        raise BadUpload(f"The zstd data is corrupt: {exc} Nothing was stored.") from exc


def pending_digest(
    path: Path,
    compression: str,
    size: int,
    zstd_checksums: tuple[tuple[int, int, int], ...] | None,
) -> DataMap:
    """The map and SHA-256 of the raw image in the pending file (read back: mostly cached),
    checked against the frame checksums the decoder left (``zstd_checksums``)."""
    try:
        found = file_digest(path, compression, size, zstd_checksums)
    except (VersionCorrupt, *DECODE_ERRORS) as exc:  # only data stored as sent
        raise BadUpload(
            f"The data does not decode to the image its headers announce ({exc}): it was "
            "damaged on the way. Nothing was stored."
        ) from exc
    if found.size != size:
        raise BadUpload(
            f"The zstd frames announce {size} bytes but hold {found.size}: the data "
            "was damaged on the way. Nothing was stored."
        )
    if found.zstd_checksums != zstd_checksums:
        raise BadUpload(
            "The zstd data does not decode to what it was compressed from (a frame "
            "checksum differs): it was damaged on the way. Nothing was stored."
        )
    return found


def qemu_check(path: Path, length: int) -> int:
    """qemu-img's verdict on the pending qcow2 file: its virtual size, or BadUpload."""
    # Trailing holes are only in the file's length after commit: extend it now.
    os.truncate(path, length)
    info = _qemu_img("info", "--output=json", "-f", "qcow2", str(path))
    if info.returncode != 0:
        raise BadUpload(f"qemu-img cannot read this qcow2 file: {_stderr(info)}")
    check = _qemu_img("check", "-q", "-f", "qcow2", str(path))
    if check.returncode not in QEMU_CHECK_OK:
        raise BadUpload(f"qemu-img check finds this qcow2 file broken: {_stderr(check)}")
    details = json.loads(info.stdout)
    if details.get("backing-filename") or details.get("format-specific", {}).get("data", {}).get(
        "data-file"
    ):
        raise BadUpload("qcow2 files that refer to other files are not accepted; flatten it.")
    return int(details["virtual-size"])


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - a fixed program on our own file
        [QEMU_IMG, *args], capture_output=True, text=True, timeout=300, check=False
    )


def _stderr(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"
