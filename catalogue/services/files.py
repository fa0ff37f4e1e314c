"""Versions as files that another program works on: copied out, and stored back.

A network mount (``flashing``) serves a version through qemu-nbd, which needs
the raw bytes as a file of its own, and brings the machine's changes back as a
merged file that becomes the image's next version. Where those files are is
the storage's business (``catalogue.storage``): here a version is copied out
into a directory given by the caller, laid out as the store lays out its own
(``LocalStorage``), and a file is stored through the catalogue's upload path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings

from catalogue.exceptions import VersionNotFound
from catalogue.models import Compression, Image, Version
from catalogue.services.compression import raw_reader
from catalogue.services.delivery import open_stored
from catalogue.services.lifecycle import quota_guard_for
from catalogue.services.uploads import VersionReceiver, version_upload
from catalogue.storage import LocalStorage, VersionExists, get_storage
from diskimage.holes import data_extents

CHUNK = 1 << 20


class CopyFailed(Exception):
    """The version could not be copied out; the message says why, for a person."""


def version_copy_raw(*, version: Version, directory: Path) -> Path:
    """The version's raw bytes as a read-only file under ``directory``; reused if present.

    A hard link to the stored file when it is raw on the same filesystem, else
    decoded into a sparse pending file, hashed on the way, and committed only
    when its size and SHA-256 are the version's: never held in memory.
    Raises CopyFailed when the file is gone or decodes to other bytes.
    """
    local = LocalStorage(directory)
    existing = local.version_file(version.image_id, version.number, Compression.NONE)
    if existing is not None:
        return existing
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # a copy may hold user data
    if version.stored_compression == Compression.NONE:
        linked = get_storage().link_version(version.image_id, version.number, into=local)
        if linked is not None:
            return linked
    with (
        _open_stored(version) as stored,
        raw_reader(stored, version.stored_compression, limit=version.size) as raw,
    ):
        path = _copy_checked(raw, local, version)
    path.chmod(0o444)
    return path


def _open_stored(version: Version) -> BinaryIO:
    """The stored file (read again from the row if a compression job swapped it)."""
    try:
        return open_stored(version)
    except (VersionNotFound, FileNotFoundError) as exc:
        raise CopyFailed(
            f"The file of version {version.number} of image {version.image_id} is gone."
        ) from exc


def _copy_checked(raw: BinaryIO, local: LocalStorage, version: Version) -> Path:
    digest = hashlib.sha256()
    size = 0
    with local.open_write(version.image_id) as pending:
        while chunk := raw.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            pending.write(chunk)
        if size != version.size or digest.hexdigest() != version.sha256:
            raise CopyFailed(
                f"Version {version.number} of image {version.image_id} decodes to {size} bytes "
                f"with SHA-256 {digest.hexdigest()}, not {version.size} bytes with "
                f"{version.sha256}: it is not served."
            )
        with contextlib.suppress(VersionExists):  # a concurrent run committed it first
            pending.commit(version.number)
    return local.version_path(version.image_id, version.number, Compression.NONE)


def version_store_file(
    *,
    actor: Any,
    image: Image,
    path: Path,
    note: str = "",
    same_as: Version | None = None,
    move: bool = False,
    stop: Callable[[], None] | None = None,
) -> Version:
    """The raw file at ``path`` through the catalogue's upload path: ``image``'s next
    version, or ``same_as`` if the bytes are the same; raises what an upload raises.

    Only the file's data is read: its holes (SEEK_DATA) are given as runs of zeros,
    which are hashed and mapped as zeros, never read. ``stop``, called after each chunk
    read, may raise to give the store up: nothing is then stored.

    ``move``: the caller gives the file up. On the store's filesystem it is moved in
    as the pending file rather than copied (still read, mapped, hashed and checked as
    an upload); ``path`` is then gone, stored or, on failure, removed."""
    receiver = VersionReceiver(
        image=image,
        max_size=settings.BAAS_MAX_IMAGE_SIZE,
        digest=True,
        wire_digest=False,
        adopt=path if move else None,
    )
    with open(path, "rb", buffering=0) as source, receiver:
        receiver.declare_encoding(Compression.NONE)
        _feed(source.fileno(), receiver, stop)
        return version_upload(
            actor=actor, image=image, receiver=receiver, note=note, same_as=same_as
        )


def _feed(fd: int, receiver: VersionReceiver, stop: Callable[[], None] | None) -> None:
    """The file's bytes to ``receiver``: its data read, its holes as zeros."""
    size = os.fstat(fd).st_size
    position = 0
    for start, end in data_extents(fd, 0, size):
        if start > position:
            receiver.write_zeros(start - position)
        position = start
        while position < end:
            chunk = os.pread(fd, min(CHUNK, end - position), position)
            if not chunk:
                return  # the file was cut short: the upload's checks see the size
            receiver.write(chunk)
            position += len(chunk)
            if stop is not None:
                stop()
    if size > position:
        receiver.write_zeros(size - position)


def version_store_stream(
    *,
    actor: Any,
    image: Image,
    chunks: Iterable[bytes],
    expected_sha256: str | None = None,
    note: str = "",
) -> Version:
    """Bytes as a client would upload them (raw, qcow2, gzip, zstd, Android sparse: recognised
    from the first bytes) through the catalogue's upload path: ``image``'s next version.
    ``expected_sha256`` must match the raw bytes or the bytes as sent; raises what an upload
    raises, and nothing is stored."""
    receiver = VersionReceiver(
        image=image, max_size=settings.BAAS_MAX_IMAGE_SIZE, digest=True, wire_digest=True
    )
    with receiver:
        for chunk in chunks:
            receiver.write(chunk)
        return version_upload(
            actor=actor,
            image=image,
            receiver=receiver,
            expected_sha256=expected_sha256,
            note=note,
        )


def image_room(image: Image) -> tuple[int, str]:
    """Bytes a new version of ``image`` may take, and which limit that is, in words."""
    room, why = settings.BAAS_MAX_IMAGE_SIZE, "the largest image this server accepts"
    guard = quota_guard_for(image)
    if guard is not None and guard.room < room:
        room, why = max(guard.room, 0), f"what is left of {image.owner}'s storage quota"
    return room, why
