"""Versions that share their unchanged blocks on the disk (reflinks), and what is held.

Part of the store (``catalogue.storage``). On a filesystem with reflinks (XFS
with ``reflink=1``, btrfs), a version's file may hold the very blocks of an
older version's file where their bytes are equal; each file still reads as
its own bytes, and a write to one never reaches the other. Deleting or
pruning a version is still one ``unlink``: the blocks another file shares stay
with it (the filesystem counts who holds each block).

Two ways in, both safe to run again:

- a writer composing a new version from an older one puts the older bytes in
  its pending file with :meth:`PendingFile.share_from
  <catalogue.storage.pending.PendingFile.share_from>` (a reflink, or a copy
  where the filesystem has none);
- :func:`version_share` makes a version already in place share the ranges it
  is told may be equal with an older version (``FIDEDUPERANGE``: the kernel
  compares the bytes under lock first, so a wrong guess or a race changes
  nothing), and records on the file (an extended attribute, gone with the file
  and with a file swapped in for it) that this was done and against which.

Where blocks cannot be shared (ext4, tmpfs, NFS) :func:`can_share` says so once
per root and process, and nothing else is attempted: no work, no record.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from diskimage import extents
from diskimage.extents import Candidate, ExtentsUnsupported

if TYPE_CHECKING:
    from catalogue.storage.local import LocalStorage

SHARE_XATTR = "user.baas.shared"  # on a version's file: {"base": n | null, "shared": bytes}
VersionFile = tuple[uuid.UUID | str, int, str]  # image, number, compression


@functools.cache
def _probe(root: str, device: int) -> bool:
    return extents.can_share(root)


def can_share(storage: LocalStorage) -> bool:
    """Whether files under the root can share blocks (probed once per root and process)."""
    try:
        device = os.stat(storage.root).st_dev
    except OSError:
        return False
    return _probe(str(storage.root), device)


def share_record(storage: LocalStorage, image_uuid: uuid.UUID | str, number: int,
                 compression: str) -> dict[str, Any] | None:  # fmt: skip
    """What :func:`version_share` recorded on the version's file; None if nothing (or
    no file). Raises OSError(ENOTSUP) where files take no extended attributes."""
    path = storage.version_path(image_uuid, number, compression)
    try:
        raw = os.getxattr(path, SHARE_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT):
            return None
        raise
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def version_share(
    storage: LocalStorage,
    image_uuid: uuid.UUID | str,
    number: int,
    compression: str,
    *,
    base: int | None,
    candidates: Iterable[Candidate],
) -> int:
    """Have version ``number``'s file share with version ``base``'s file (both stored in
    ``compression``) the ``candidates`` whose bytes the kernel finds equal, and record it;
    the bytes shared now. ``base`` None: nothing to share with (recorded, so it is not
    tried again). FileNotFoundError when the version's file is gone.

    The caller holds the version's job lock (nothing else replaces its file meanwhile);
    the base may be deleted or swapped at any time: its open file is read, and equal
    bytes are all that is ever shared."""
    path = storage.version_path(image_uuid, number, compression)
    shared = 0
    with open(path, "rb") as target:
        if base is not None:
            try:
                source = storage.open_read(uuid.UUID(str(image_uuid)), base, compression)
            except FileNotFoundError:
                source = None
            if source is not None:
                with source:
                    shared = extents.dedupe_candidates(source.fileno(), target.fileno(), candidates)
        record = json.dumps({"base": base, "shared": shared}).encode()
        os.setxattr(target.fileno(), SHARE_XATTR, record)
    return shared


def _open_all(storage: LocalStorage, files: Iterable[VersionFile]) -> list[int]:
    fds = []
    for image_uuid, number, compression in files:
        try:
            fds.append(os.open(storage.version_path(image_uuid, number, compression), os.O_RDONLY))
        except FileNotFoundError:
            continue
    return fds


def held_bytes(storage: LocalStorage, files: Iterable[VersionFile]) -> int:
    """Bytes the files hold on the disk together, a block shared by several counted once:
    the union of their extents' physical ranges (FIEMAP). Where the filesystem does not
    say (no FIEMAP), their allocated bytes added up, as nothing there is shared."""
    fds = _open_all(storage, files)
    try:
        try:
            return extents.held_bytes(fds)
        except ExtentsUnsupported:
            return sum(os.fstat(fd).st_blocks * 512 for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def shared_bytes(storage: LocalStorage, image_uuid: uuid.UUID | str, number: int,
                 compression: str) -> int:  # fmt: skip
    """Bytes of the version's file whose blocks another file holds too (0 when unknown)."""
    try:
        with open(storage.version_path(image_uuid, number, compression), "rb") as file:
            return extents.shared_bytes(file.fileno())
    except (FileNotFoundError, ExtentsUnsupported):
        return 0
