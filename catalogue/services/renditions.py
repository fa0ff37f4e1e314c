"""Raw renditions of qcow2 versions: the disk a qcow2 file describes.

A qcow2 file is a container: written as it is onto a machine's disk it is not
the disk it describes. So every version of a qcow2 image gets, in the
background, a *raw rendition*: ``qemu-img convert -O raw`` of its file, kept
beside it as ``<root>/<image uuid>/<n>.raw`` (sparse: zeros stay holes) with
its data map ``<n>.raw.map.json`` (the same format as any version's,
``diskimage.datamap``) and its SHA-256 on the row (``Version.raw_sha256``).
Its size is the version's ``virtual_size``.

The rendition is what agents write (``flashing.services.agent``) and what
``?format=raw`` serves (``rendition_delivery``), with its own map and data
stream. It is the last step of the version's processing
(``catalogue.services.pipeline``: made in the background once the version is
stored, and again by its sweep when a job was lost), or made on the spot by the
flashing pipeline when a deployment needs it first (:func:`version_raw_ensure`).
Every write goes to a ``.part`` file in the image's directory, fsynced, then
renamed into place; the row says ``ready`` only once the file and its map are
in place.

A qcow2 file qemu-img refuses, that refers to other files, whose virtual size
is past ``BAAS_MAX_IMAGE_SIZE``, or whose conversion takes longer than
``BAAS_RAW_RENDITION_TIMEOUT`` seconds gets no rendition: the row says
``failed`` with the reason in plain words, and flashing refuses it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from baas_site.exceptions import Conflict
from catalogue.models import Compression, FileStandard, RawState, Version
from catalogue.services.codecs import DECODE_ERRORS, VersionCorrupt, raw_reader
from catalogue.services.delivery import open_stored
from catalogue.services.digests import file_digest
from catalogue.storage import PART_SUFFIX, StorageFull, get_storage, is_disk_full
from diskimage.datamap import DataMap

logger = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
RAW_SUFFIX = ".raw"
RAW_MAP_SUFFIX = ".raw.map.json"
INFO_TIMEOUT = 60  # seconds for qemu-img info: it reads only the header and tables
READ = 1 << 20
RETRY_AFTER = 30  # seconds a client waits before asking again for a rendition being made
# qemu-img check: 0 clean, 3 only leaked clusters (harmless); anything else is a broken image.
QEMU_CHECK_OK = (0, 3)


class RenditionNotReady(Conflict):
    """The raw rendition is still being made: ask again later (409, with Retry-After)."""

    default_detail = "The raw disk of this qcow2 version is still being made; ask again shortly."
    default_code = "raw_pending"
    retry_after = RETRY_AFTER


class RenditionFailed(Conflict):
    """The raw rendition could not be made; ``detail`` says why (409, no point retrying)."""

    default_detail = "The raw disk of this qcow2 version could not be made."
    default_code = "raw_failed"


class _Refused(Exception):
    """qemu-img will not make this rendition; the message says why, in plain words."""


# --- Where renditions are ------------------------------------------------------------


def rendition_path(image_uuid: uuid.UUID | str, number: int) -> Path:
    """``<root>/<image uuid>/<number>.raw``: the raw rendition of that version."""
    return _path(image_uuid, number, RAW_SUFFIX)


def rendition_map_path(image_uuid: uuid.UUID | str, number: int) -> Path:
    return _path(image_uuid, number, RAW_MAP_SUFFIX)


def _path(image_uuid: uuid.UUID | str, number: int, suffix: str) -> Path:
    return get_storage().beside_path(image_uuid, number, suffix)


def rendition_delete(image_uuid: uuid.UUID | str, number: int) -> None:
    """Remove version ``number``'s rendition and its map (call with its version's files)."""
    rendition_path(image_uuid, number).unlink(missing_ok=True)
    rendition_map_path(image_uuid, number).unlink(missing_ok=True)


# --- State ---------------------------------------------------------------------------


def is_qcow2(version: Version) -> bool:
    return version.image.file_standard == FileStandard.QCOW2


def disk_size(version: Version) -> int:
    """Bytes the version fills on a disk: a qcow2 version's virtual size, a raw one's size
    (which is its virtual size too)."""
    return version.virtual_size or version.size


def rendition_summary(version: Version) -> dict[str, Any] | None:
    """What the API and pages show of a version's rendition; None for a raw image's."""
    if not version.raw_state:
        return None
    ready = version.raw_state == RawState.READY
    return {
        "state": version.raw_state,
        "size": version.virtual_size,
        "sha256": version.raw_sha256 if ready else None,
        "reason": version.raw_reason or None,
    }


def rendition_check(version: Version) -> None:
    """Raise RenditionFailed (with its reason) or RenditionNotReady unless it is ready."""
    if version.raw_state == RawState.FAILED:
        raise RenditionFailed(
            f"Version {version.number} has no raw disk: {version.raw_reason} "
            "Upload a qcow2 file that qemu-img converts, or a raw image."
        )
    if version.raw_state != RawState.READY:
        raise RenditionNotReady(
            f"The raw disk of version {version.number} is still being made from its qcow2 "
            f"file; ask again in {RETRY_AFTER} seconds."
        )


# --- Making one ----------------------------------------------------------------------


def version_raw_make(*, version_id: int) -> Version | None:
    """Make (if it is not made) the rendition of a qcow2 version; the version, or None if
    it is gone. Idempotent; two runs at once both convert and the rows agree.

    The version comes back ``ready`` or ``failed`` (with its reason). Raises
    StorageFull when the image store is full (worth retrying later).
    """
    version = Version.objects.select_related("image").filter(pk=version_id).first()
    if version is None or not is_qcow2(version):
        return version
    made = version.raw_state == RawState.READY and rendition_path(*rendition_key(version)).exists()
    if made or version.raw_state == RawState.FAILED:
        return version
    if version.damaged:
        return _record_failure(version, f"Its qcow2 file is damaged: {version.damaged}")
    try:
        datamap = _convert(version)
    except _Refused as exc:
        return _record_failure(version, str(exc))
    except (VersionCorrupt, *DECODE_ERRORS) as exc:
        return _record_failure(version, f"Its stored file does not decode ({exc}).")
    return _record_ready(version, datamap)


def version_raw_ensure(version: Version) -> Version:
    """``version`` with its rendition ready, made now if it is not (the flashing pipeline,
    before a deployment starts, like the SHA-256 of a large upload).

    Raises RenditionFailed with the reason if it cannot be made (now, for a full
    image store), and Version.DoesNotExist if the version was deleted meanwhile.
    Does nothing for a raw image's version.
    """
    if not is_qcow2(version) or version.raw_state == RawState.READY:
        return version
    if version.raw_state != RawState.FAILED:
        try:
            made = version_raw_make(version_id=version.pk)
        except StorageFull as exc:
            raise RenditionFailed(
                f"The image store is full: the raw disk of version {version.number} cannot "
                "be made now. Ask an administrator."
            ) from exc
        if made is None:
            raise Version.DoesNotExist(f"Version {version.pk} was deleted.")
        for field in ("raw_state", "raw_sha256", "raw_reason", "virtual_size"):
            setattr(version, field, getattr(made, field))
    rendition_check(version)
    return version


def rendition_key(version: Version) -> tuple[uuid.UUID, int]:
    return version.image_id, version.number


def _convert(version: Version) -> DataMap:
    """Convert the version's qcow2 file into its rendition, in place, with its map."""
    directory = get_storage().image_dir(version.image_id)
    # Held locked while qemu-img writes it: the stale-upload sweep removes only dead ones.
    with get_storage().held_part(directory, ".raw") as part:
        return _convert_into(version, directory, part)


def _convert_into(version: Version, directory: Path, part: Path) -> DataMap:
    try:
        with _qcow2_source(version) as (source, fds):
            virtual = _inspect(source, fds)
            _qemu_img_convert(source, fds, part)
        size = part.stat().st_size
        if size != virtual:
            raise _Refused(f"qemu-img wrote {size} bytes, not its virtual size of {virtual}.")
        datamap = file_digest(part, Compression.NONE, size)
        _fsync(part)
        _write_atomic(rendition_map_path(*rendition_key(version)), datamap.dumps())
        os.replace(part, rendition_path(*rendition_key(version)))
        _fsync(directory, directory=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise StorageFull("No space left in the image store.") from exc
        raise
    finally:
        part.unlink(missing_ok=True)
    return datamap


@contextlib.contextmanager
def _qcow2_source(version: Version) -> Iterator[tuple[str, tuple[int, ...]]]:
    """A path qemu-img can open to the version's qcow2 file, and the descriptors it needs.

    A file stored uncompressed is handed over by descriptor, so a compression
    job swapping it meanwhile changes nothing; a compressed one is decoded into
    a scratch ``.part`` file first (qemu-img needs to seek).
    """
    stored = open_stored(version)
    if version.stored_compression == Compression.NONE:
        with stored:
            yield f"/dev/fd/{stored.fileno()}", (stored.fileno(),)
        return
    directory = get_storage().image_dir(version.image_id)
    scratch = directory / f".{uuid.uuid4().hex}.qcow2{PART_SUFFIX}"
    try:
        with raw_reader(stored, version.stored_compression) as raw, open(scratch, "xb") as out:
            written = 0
            while chunk := raw.read(READ):
                written += len(chunk)
                if written > version.size:
                    raise VersionCorrupt(f"it holds more than its {version.size} bytes")
                out.write(chunk)
        yield str(scratch), ()
    finally:
        scratch.unlink(missing_ok=True)


def _inspect(source: str, fds: tuple[int, ...]) -> int:
    """The qcow2 file's virtual size, once qemu-img reads and checks it and it stands alone."""
    info = _qemu_img(["info", "--output=json", "-f", "qcow2", source], fds, INFO_TIMEOUT)
    if info.returncode != 0:
        raise _Refused(f"qemu-img cannot read its qcow2 file: {_stderr(info)}")
    details = json.loads(info.stdout)
    data_file = details.get("format-specific", {}).get("data", {}).get("data-file")
    if details.get("backing-filename") or data_file:
        raise _Refused("Its qcow2 file refers to other files (a backing or data file).")
    virtual = int(details["virtual-size"])
    limit = settings.BAAS_MAX_IMAGE_SIZE
    if virtual > limit:
        raise _Refused(
            f"Its virtual size of {virtual} bytes is more than this server's {limit}-byte limit."
        )
    check = _run_bounded(["check", "-q", "-f", "qcow2", source], fds, "check")
    if check.returncode not in QEMU_CHECK_OK:
        raise _Refused(f"qemu-img check finds its qcow2 file broken: {_stderr(check)}")
    return virtual


def _qemu_img_convert(source: str, fds: tuple[int, ...], target: Path) -> None:
    """``qemu-img convert -O raw``, sparse, within BAAS_RAW_RENDITION_TIMEOUT seconds."""
    args = ["convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k", source, str(target)]
    result = _run_bounded(args, fds, "convert")
    if result.returncode != 0:
        if "No space left" in (result.stderr or ""):
            raise StorageFull("No space left in the image store.")
        raise _Refused(f"qemu-img could not convert its qcow2 file: {_stderr(result)}")


def _run_bounded(args: list[str], fds: tuple[int, ...], what: str) -> subprocess.CompletedProcess:
    """qemu-img stopped after BAAS_RAW_RENDITION_TIMEOUT seconds (then _Refused)."""
    limit = settings.BAAS_RAW_RENDITION_TIMEOUT
    try:
        return _qemu_img(args, fds, limit)
    except subprocess.TimeoutExpired as exc:
        raise _Refused(f"qemu-img took more than {limit} seconds to {what} it.") from exc


def _qemu_img(args: list[str], fds: tuple[int, ...], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - a fixed program on our own files
        [QEMU_IMG, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        pass_fds=fds,
    )


def _stderr(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(final: Path, payload: bytes) -> None:
    part = final.parent / f".{uuid.uuid4().hex}{PART_SUFFIX}"
    try:
        with open(part, "xb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)


def _record_ready(version: Version, datamap: DataMap) -> Version | None:
    with transaction.atomic():
        row = Version.objects.select_for_update().filter(pk=version.pk).first()
        if row is None:  # deleted meanwhile: so are its rendition's files
            transaction.on_commit(lambda: rendition_delete(*rendition_key(version)))
            return None
        row.raw_state, row.raw_sha256, row.raw_reason = RawState.READY, datamap.sha256, ""
        row.virtual_size = datamap.size
        row.save(update_fields=["raw_state", "raw_sha256", "raw_reason", "virtual_size"])
    row.image = version.image
    logger.info("Raw rendition of version %s: %s", row.pk, row.raw_sha256)
    return row


def _record_failure(version: Version, reason: str) -> Version | None:
    reason = reason[:500]
    logger.warning("No raw rendition for version %s: %s", version.pk, reason)
    updated = Version.objects.filter(pk=version.pk).exclude(raw_state=RawState.READY)
    updated.update(raw_state=RawState.FAILED, raw_sha256="", raw_reason=reason)
    row = Version.objects.select_related("image").filter(pk=version.pk).first()
    return row
