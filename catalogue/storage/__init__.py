"""Where image bytes live: ``<root>/<image uuid>/<n>.img[.zst|.gz]``.

One small interface — open for write, commit, open for read, delete, usage —
so a second backend can be added without touching views or services. The local
filesystem backend (``local``) writes every version the same way (``pending``):
into a temporary ``.part`` file in the image's own directory (the same
filesystem, so nothing is ever copied twice), leaving zero blocks as holes, then
``fsync`` and an atomic link into place that never overwrites an existing
version. Only after that may the caller create the database row.

Where the filesystem has reflinks (XFS ``reflink=1``, btrfs), versions share
their unchanged blocks (``shared``): ``PendingFile.share_from`` puts an older
version's bytes into a file being written (a reflink, else a copy), and
``LocalStorage.version_share`` has a stored version share equal ranges with an
older one (the kernel compares first); ``held_bytes`` counts what is held.

The store is the only code that knows paths under the root (``names`` spells
them): other code asks it for a version's file, its map, its rendition, a
scratch file, and never builds a name, takes a ``.parent`` or tests ``.exists()``.
"""

from __future__ import annotations

from catalogue.storage.local import LocalStorage, get_storage
from catalogue.storage.names import MAP_SUFFIX, PART_SUFFIX, SUFFIXES, StoredName
from catalogue.storage.pending import (
    PendingFile,
    StorageError,
    StorageFull,
    StoredFile,
    VersionExists,
    is_disk_full,
)
from catalogue.storage.resumable import DecodedPart, ResumablePart

__all__ = [
    "MAP_SUFFIX",
    "PART_SUFFIX",
    "SUFFIXES",
    "DecodedPart",
    "LocalStorage",
    "PendingFile",
    "ResumablePart",
    "StorageError",
    "StorageFull",
    "StoredFile",
    "StoredName",
    "VersionExists",
    "get_storage",
    "is_disk_full",
]
