"""What apps built on the catalogue (flashing) may use of it, besides ``catalogue.models``.

One door, so the catalogue's services and storage can be rearranged behind it:
an app imports its models (for foreign keys and forms) and this module, nothing
deeper. Every function here only delegates. The other direction, what the
catalogue must ask those apps, goes through ``catalogue.holders``.

Versions, before a machine gets them:

* :func:`version_digest_ensure` — the SHA-256, computed now if the upload left it
  to later (raises ``Version.DoesNotExist``, :class:`VersionCorrupt`);
* :func:`version_raw_ensure` — the raw rendition of a qcow2 version, made now if
  need be (raises ``Version.DoesNotExist``, :class:`RenditionFailed`);
* :func:`version_disk_size` — the bytes it fills on a disk;
* :func:`version_stored_size` — the bytes of its stored file, None if it is gone;
* :func:`version_boot_files` — a boot image's kernel, initrd and command line
  (raises :class:`BootImageError`);
* :func:`version_copy_raw` — its raw bytes as a read-only file in a directory
  of the caller's, for a program that needs a file (raises :class:`CopyFailed`);
* :func:`version_written_map` — the data map of what it puts on a disk, and
  :func:`version_data_layout` — that map with where each range is in its data
  stream (for an agent that needs only some ranges).

What a machine sends back: :func:`version_store_file` stores a file (a network
mount's merged image) as the image's next version, as an upload would;
:func:`version_store_stream` stores bytes as a client would send them (an
import from a URL), and :func:`image_room` says how large a new version may be.

Setups: :func:`setup_get_usable` — a setup a user may flash, or None;
:func:`setup_list_usable` — every setup a user may flash.

Who may do what with images and setups (``catalogue.rules``), for the app's own
checks: :func:`can_read_image`, :func:`can_write_image`, :func:`can_use_setup`.

What the app holds of images, versions and setups, so the catalogue does not
delete them: :func:`holder_register` with a :class:`Holder` (``catalogue.holders``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from django.db.models import QuerySet

from accounts.rules import Actor
from catalogue.holders import Holder
from catalogue.holders import register as holder_register
from catalogue.models import Image, ImageSetup, Version
from catalogue.rules import can_read_image, can_use_setup, can_write_image
from catalogue.selectors import setups as _setups
from catalogue.services import bootfiles as _bootfiles
from catalogue.services import datalayout as _datalayout
from catalogue.services import digests as _digests
from catalogue.services import files as _files
from catalogue.services import renditions as _renditions
from catalogue.services.bootfiles import BootFiles, BootImageError
from catalogue.services.compression import VersionCorrupt
from catalogue.services.files import CopyFailed
from catalogue.services.renditions import RenditionFailed
from catalogue.storage import get_storage
from diskimage.datamap import DataMap

__all__ = [
    "BootFiles",
    "BootImageError",
    "CopyFailed",
    "Holder",
    "RenditionFailed",
    "VersionCorrupt",
    "can_read_image",
    "can_use_setup",
    "can_write_image",
    "holder_register",
    "image_room",
    "setup_get_usable",
    "setup_list_usable",
    "version_boot_files",
    "version_copy_raw",
    "version_data_layout",
    "version_digest_ensure",
    "version_disk_size",
    "version_raw_ensure",
    "version_store_file",
    "version_store_stream",
    "version_stored_size",
    "version_written_map",
]


def version_digest_ensure(version: Version) -> str:
    """The version's SHA-256 (hex), computed now if need be; set on ``version`` too."""
    return _digests.version_digest_ensure(version)


def version_raw_ensure(version: Version) -> Version:
    """``version`` with its raw rendition ready (a qcow2 version), made now if need be."""
    return _renditions.version_raw_ensure(version)


def version_disk_size(version: Version) -> int:
    """Bytes the version fills on a disk (a qcow2 version: its virtual size)."""
    return _renditions.disk_size(version)


def version_stored_size(version: Version) -> int | None:
    """Bytes of the version's stored file as it is stored (compressed or not); None if gone."""
    try:
        stored = get_storage().stat(version.image_id, version.number, version.stored_compression)
    except OSError:
        return None
    return stored.size


def version_boot_files(version: Version) -> BootFiles:
    """The boot files of a version of a boot image, extracted once and cached."""
    return _bootfiles.boot_files_for(version)


def version_copy_raw(*, version: Version, directory: Path) -> Path:
    """The version's raw bytes as a read-only file under ``directory``, checked; reused."""
    return _files.version_copy_raw(version=version, directory=directory)


def version_written_map(version: Version) -> DataMap | None:
    """The data map of the bytes the version puts on a disk; None if it has none (yet)."""
    return _datalayout.written_map(version)


def version_data_layout(version: Version) -> tuple[DataMap, list[tuple[int, int]]] | None:
    """That map and each range's ``(offset, length)`` in the version's data stream, or None."""
    return _datalayout.data_layout(version)


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
    """The raw file at ``path`` as ``image``'s next version (``same_as`` if unchanged);
    ``move``: the file is given up, moved into the store instead of copied where it can;
    ``stop``: called as the file is read, may raise to give the store up (nothing stored)."""
    return _files.version_store_file(
        actor=actor, image=image, path=path, note=note, same_as=same_as, move=move, stop=stop
    )


def version_store_stream(
    *,
    actor: Any,
    image: Image,
    chunks: Iterable[bytes],
    expected_sha256: str | None = None,
    note: str = "",
) -> Version:
    """Bytes as an upload sends them (any encoding an upload takes) as ``image``'s next version."""
    return _files.version_store_stream(
        actor=actor, image=image, chunks=chunks, expected_sha256=expected_sha256, note=note
    )


def image_room(image: Image) -> tuple[int, str]:
    """Bytes a new version of ``image`` may take (size limit, owner's quota), and which limit."""
    return _files.image_room(image)


def setup_get_usable(*, user: Actor, setup_uuid: Any) -> ImageSetup | None:
    """A setup ``user`` may flash, or None (not found, or not theirs to use)."""
    return _setups.setup_get_usable(user=user, setup_uuid=setup_uuid)


def setup_list_usable(*, user: Actor) -> QuerySet[ImageSetup]:
    """Every setup ``user`` may flash (``can_use_setup`` as a query)."""
    return _setups.setup_list_usable(user=user)
