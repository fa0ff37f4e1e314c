"""A resumable upload's file between its requests: its bytes as sent
(:class:`ResumablePart`), or the raw image they decode to (:class:`DecodedPart`).

Part of the store (``catalogue.storage``), beside :mod:`catalogue.storage.pending`, whose
pending file a decoded part is.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from catalogue.storage.names import resumable_part_name
from catalogue.storage.pending import PendingFile, StorageError, StorageFull, is_disk_full
from diskimage.holes import is_zeros

if TYPE_CHECKING:
    from catalogue.storage.local import LocalStorage


class ResumablePart:
    """The bytes as sent of a resumable upload, kept between its requests.

    ``<image dir>/.upload-<token>.part``: unlike a :class:`PendingFile` it belongs
    to its row (``catalogue.models.ResumableUpload``), not to a live writer, so the
    stale purge leaves it; the row's expiry removes it. Appends start at the row's
    acknowledged offset (anything past it, written before a crash, is cut off) and
    blocks of zeros stay holes. ``sync`` makes what was appended durable before the
    row acknowledges it; :meth:`flush` does the same from another process, for the
    prefix the file holds while its appender goes on.
    """

    def __init__(self, storage: LocalStorage, image_uuid: uuid.UUID, token: str):
        self.path = storage.image_dir(image_uuid) / resumable_part_name(token)
        self._storage, self._image_uuid = storage, image_uuid
        self._file: BinaryIO | None = None
        self.position = 0

    def decoded(self, position: int) -> DecodedPart:
        """The file as the raw image decoded so far (an upload decoded as it arrives), for
        writing at ``position`` on: whatever lies past it is cut off."""
        return DecodedPart(self._storage, self._image_uuid, self.path, position)

    def open(self, offset: int) -> None:
        """Open for appending at ``offset`` (created empty at 0)."""
        self.path.parent.mkdir(exist_ok=True)
        if offset and not self.path.exists():
            raise StorageError(f"{self.path.name} is missing: its bytes were lost")
        self._file = open(self.path, "r+b" if self.path.exists() else "xb", buffering=0)  # noqa: SIM115
        if os.fstat(self._file.fileno()).st_size < offset:
            raise StorageError(f"{self.path.name} holds fewer bytes than were acknowledged")
        self._file.truncate(offset)
        self._file.seek(offset)
        self.position = offset

    def append(self, data: bytes) -> None:
        assert self._file is not None
        try:
            if is_zeros(data):  # a memcmp: bytes.count(0) costs ~1 s of a core per GiB
                self._file.seek(len(data), os.SEEK_CUR)  # zeros: a hole (sized by sync)
            else:
                view = memoryview(data)
                while view:
                    view = view[self._file.write(view) :]
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise
        self.position += len(data)

    def sync(self) -> int:
        """Make every appended byte durable; return the bytes the file takes on disk."""
        assert self._file is not None
        self._file.truncate(self.position)  # trailing zeros seeked over: a hole
        os.fdatasync(self._file.fileno())  # the data and the size; no timestamps
        return self.allocated()

    def allocated(self) -> int:
        """The bytes the file takes on disk now (synced or not)."""
        assert self._file is not None
        return os.fstat(self._file.fileno()).st_blocks * 512

    def flush(self) -> int | None:
        """Make the bytes the file holds durable, whoever is appending to it; return how
        many (every byte below the size its appender has written: trailing zeros it
        seeked over are not counted), or None if the file is gone."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size  # before the sync: all of it is then durable
            os.fdatasync(fd)
            return size
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    def reader(self) -> BinaryIO:
        return open(self.path, "rb")

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class DecodedPart(PendingFile):
    """A resumable upload's raw image, decoded as its bytes arrived: a pending file that
    outlives its request (its :class:`ResumablePart`'s path, which its row owns).

    Opened at the position its last checkpoint recorded, with everything past it cut off
    (bytes a crashed request wrote after it, which the next requests would otherwise leave
    where holes belong). :meth:`sync` makes what was written durable before the row
    records a checkpoint; ``commit`` puts it in place as any pending file; ``abort`` only
    closes it (the bytes stay for the next request); :meth:`remove` removes them.
    """

    def __init__(self, storage: LocalStorage, image_uuid: uuid.UUID, path: Path, position: int):
        self.storage = storage
        self.image_uuid = image_uuid
        self.sparse = True
        self.path = path
        path.parent.mkdir(exist_ok=True)
        if position and not path.exists():
            raise StorageError(f"{path.name} is missing: its bytes were lost")
        self._file = open(path, "r+b" if path.exists() else "xb", buffering=0)  # noqa: SIM115
        try:
            if os.fstat(self._file.fileno()).st_size < position:
                raise StorageError(f"{path.name} holds fewer bytes than were acknowledged")
            self._file.truncate(position)
        except BaseException:
            self._file.close()
            raise
        self.position = position
        self._carry = b""
        self._unsynced = 0
        self._written = os.fstat(self._file.fileno()).st_blocks * 512
        self._done = False
        self._open_writer(position)

    def sync(self) -> int:
        """Make every byte written durable (the size too); return the bytes it takes."""
        self.flush()
        self._file.truncate(self.position)
        os.fdatasync(self._file.fileno())
        return self.allocated()

    def abort(self) -> None:
        self._done = True
        self._close()

    def remove(self) -> None:
        self.abort()
        self.path.unlink(missing_ok=True)
