"""Writing a version: a pending ``.part`` file, sparse, put in place atomically.

Part of the store (``catalogue.storage``); it asks the store where to write.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from catalogue.storage.direct import DirectWriter, open_direct, pwrite_all
from catalogue.storage.names import part_name
from diskimage import BLOCK
from diskimage.extents import clone_range, release_holes
from diskimage.holes import zero_block_runs

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

    from catalogue.storage.local import LocalStorage


# Writeback of what a pending file received is started every this many bytes.
WRITEBACK_EVERY = 32 << 20
SYNC_FILE_RANGE_WRITE = 2


class StorageError(Exception):
    """Something went wrong with the image store."""


class StorageFull(StorageError):
    """The image root has no space left (ENOSPC or EDQUOT)."""


class VersionExists(StorageError):
    """A file is already stored for this version; it is never overwritten."""


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int  # bytes in the file (logical, holes included)
    allocated: int  # bytes actually allocated on disk


def stored_file(path: Path) -> StoredFile:
    st = path.stat()
    return StoredFile(path=path, size=st.st_size, allocated=st.st_blocks * 512)


def _sync_file_range() -> CFuncPtr | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int) -> None:
    """Have the kernel start writing the file's dirty pages, without waiting for them.

    The disk then works while the upload goes on, and the final fsync only
    waits for the last few megabytes instead of the whole image. Errors are
    left for that fsync, which reports them (nothing is consumed here).
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingFile:
    """A version being written. ``commit()`` puts it in place; ``abort()`` removes it.

    Used as a context manager, it aborts on any exception, so an interrupted
    write leaves nothing behind but, after a crash, a ``.part`` file that
    ``purge_stale`` removes. The writer holds an exclusive ``flock`` on its
    ``.part`` for as long as it has it open: a ``.part`` nobody holds belongs to
    a writer that died (the kernel drops the lock with the process).
    """

    def __init__(self, storage: LocalStorage, image_uuid: uuid.UUID, sparse: bool = True):
        self.storage = storage
        self.image_uuid = image_uuid
        self.sparse = sparse
        directory = storage.image_dir(image_uuid)
        directory.mkdir(exist_ok=True)
        self.path = directory / part_name()
        self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed in commit/abort
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # new and ours: never waits
        self.position = 0  # logical bytes received, holes included
        self._carry = b""  # an unaligned tail not yet written
        self._unsynced = 0  # bytes written since writeback was last started
        self._written = 0  # bytes written in all (not seeked over)
        self._done = False
        self._open_writer(0)

    def _open_writer(self, offset: int) -> None:
        """Where the next bytes go (``offset``), and how: past the page cache where the
        filesystem allows it (:mod:`catalogue.storage.direct`)."""
        self._offset = offset
        try:
            self._direct: DirectWriter | None = open_direct(self.path, self._file.fileno())
        except BaseException:
            self._file.close()
            raise

    @property
    def direct(self) -> bool:
        """Whether the data goes to the disk past the page cache (``O_DIRECT``)."""
        return self._direct is not None and self._direct.direct

    def flush(self) -> None:
        """Everything written so far is in the file (readable at its path; not yet
        durable: :meth:`commit` and a resumable part's ``sync`` make it so)."""
        if self._direct is not None:
            self._direct.flush()

    def allocated(self) -> int:
        """The bytes the file takes on disk now, with those written but still staged."""
        staged = self._direct.staged if self._direct is not None else 0
        return os.fstat(self._file.fileno()).st_blocks * 512 + staged

    def _close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; all-zero blocks become holes when writing sparse.

        Holes are found at BLOCK boundaries of the file, whatever the chunk
        sizes: an unaligned tail waits in ``_carry`` for the next chunk, and
        the next chunk's first bytes complete it. The chunk itself is never
        copied (only the carry is): a fresh megabyte per chunk costs hundreds
        of page faults, more than the rest of the work.
        """
        self.position += len(data)
        try:
            if not self.sparse:
                self._write_all(memoryview(data))
                return
            if isinstance(data, memoryview):
                data = bytes(data)
            start = 0
            if self._carry:
                start = min(BLOCK - len(self._carry), len(data))
                self._carry += data[:start]
                if len(self._carry) < BLOCK:
                    return
                self._write_sparse(self._carry, 0, BLOCK)
            end = start + (len(data) - start) // BLOCK * BLOCK
            self._carry = data[end:]
            if end > start:
                self._write_sparse(data, start, end)
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise

    def _write_all(self, view: memoryview) -> None:
        """Write ``view`` at the current offset, and move past it."""
        self._written += len(view)
        offset, self._offset = self._offset, self._offset + len(view)
        if self._direct is not None:
            self._direct.write(view, offset)
            return
        pwrite_all(self._file.fileno(), view, offset)
        self._unsynced += len(view)
        if self._unsynced >= WRITEBACK_EVERY:
            self._unsynced = 0
            start_writeback(self._file.fileno())

    def _write_sparse(self, data: bytes | bytearray, start: int, end: int) -> None:
        """Write ``data[start:end]``, whole blocks, seeking over those that are all zeros."""
        view = memoryview(data)
        written = start  # what precedes is on disk, or seeked over
        for hole, zeros in zero_block_runs(data, start, end):
            self._write_all(view[written:hole])
            self._offset += zeros - hole
            written = zeros
        self._write_all(view[written:end])

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``, at or past everything written so far: what is
        skipped stays a hole. For a writer told where the data is (a DataMapper's
        ``on_data``); do not mix with :meth:`write`."""
        if offset < self.position:
            raise ValueError(f"write at {offset}, before the {self.position} bytes written")
        try:
            self._offset = offset
            self._write_all(memoryview(data))
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise
        self.position = offset + len(data)

    def share_from(
        self, source: BinaryIO, offset: int, length: int, *, at: int | None = None
    ) -> int:
        """Put ``source``'s bytes ``[offset, offset + length)`` at ``at`` (default: the same
        offset) of this file, at or past everything written so far, as :meth:`write_at`:
        by sharing ``source``'s blocks where the filesystem can (a reflink, for a version
        composed from an older one: ``storage.open_read`` of the base's raw file), else
        by copying them in the kernel. Returns the bytes shared (0: copied)."""
        at = offset if at is None else at
        if at < self.position:
            raise ValueError(f"share at {at}, before the {self.position} bytes written")
        if self._carry:
            raise ValueError("share_from after write(): use write_at() to compose a file")
        try:
            self.flush()
            done = clone_range(source.fileno(), offset, self._file.fileno(), at, length)
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise
        self.position = self._offset = at + length
        return done

    def extend_to(self, size: int) -> None:
        """The logical size is ``size``: what follows the last write is a hole."""
        self.position = max(self.position, size)

    def commit(
        self, number: int, compression: str = "none", *, replace: bool = False
    ) -> StoredFile:
        """Make the file version ``number``: durable, complete, in place. Never overwrites,
        unless ``replace``: the same bytes rewritten in the same compression (laid out in
        frames), renamed over the old file, which readers that have it open keep."""
        final = self.storage.version_path(self.image_uuid, number, compression)
        try:
            self._write_all(memoryview(self._carry))
            self.flush()
            # Trailing holes: the size must be the logical size, not the last byte written.
            self._file.truncate(self.position)
            self._release_preallocation()
            os.fsync(self._file.fileno())
            # Put in place while the lock is held: the purge never sees it unheld.
            if replace:
                os.replace(self.path, final)
            else:
                os.link(self.path, final)
                os.unlink(self.path)
            self._close()
        except FileExistsError as exc:
            self.abort()
            raise VersionExists(f"{final.name} already exists") from exc
        except OSError as exc:
            self.abort()
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise
        fsync_dir(final.parent)
        self._done = True
        return stored_file(final)

    def _release_preallocation(self) -> None:
        """A sparse file holding more blocks than were written to it (XFS preallocates in
        the holes seeked over) gives the extra back; elsewhere this costs one fstat."""
        if self.sparse and os.fstat(self._file.fileno()).st_blocks * 512 > self._written + (
            1 << 20
        ):
            release_holes(self._file.fileno())

    def abort(self) -> None:
        self._done = True
        self.path.unlink(missing_ok=True)  # before the lock goes with the descriptor
        self._close()


class AdoptedFile(PendingFile):
    """A finished raw file moved into the image's directory as its pending file.

    For a file made on the same filesystem (an import's ``mke2fs`` output): it is
    renamed in, locked before the rename so the stale purge never sees it unheld,
    and its bytes stay where they are. The upload path then reads, maps and hashes
    it as it would any upload; ``write`` and ``write_at`` only count what they are
    given (those very bytes, read from this file), and ``commit`` puts it in place
    as any pending file (``fsync``, atomic link). ``abort`` removes it.
    """

    def __init__(self, storage: LocalStorage, image_uuid: uuid.UUID, source: Path):
        self.storage = storage
        self.image_uuid = image_uuid
        self.sparse = True
        directory = storage.image_dir(image_uuid)
        directory.mkdir(exist_ok=True)
        self.path = directory / part_name()
        self._file = open(source, "r+b", buffering=0)  # noqa: SIM115 - closed in commit/abort
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(source, self.path)
        except OSError:
            self._file.close()
            raise
        self.position = 0
        self._carry = b""
        self._unsynced = 0
        # What it holds was written by its maker: no preallocation of ours to give back.
        self._written = os.fstat(self._file.fileno()).st_blocks * 512
        self._done = False
        self._offset, self._direct = 0, None  # nothing is written to it

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.position += len(data)

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        if offset < self.position:
            raise ValueError(f"write at {offset}, before the {self.position} bytes written")
        self.position = offset + len(data)

    def share_from(
        self, source: BinaryIO, offset: int, length: int, *, at: int | None = None
    ) -> int:
        raise ValueError("an adopted file already holds its bytes")

    def commit(
        self, number: int, compression: str = "none", *, replace: bool = False
    ) -> StoredFile:
        size = os.fstat(self._file.fileno()).st_size
        if self.position != size:  # never cut or grow the bytes that were mapped and hashed
            self.abort()
            raise StorageError(f"{self.path.name} holds {size} bytes, not {self.position}")
        return super().commit(number, compression, replace=replace)


def remove_unheld(path: Path) -> bool:
    """Unlink ``path`` if no process holds a lock on it; whether it was removed."""
    with open(path, "rb+") as file:  # writable: NFS emulates flock with record locks
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer
        # Still the file we locked (a writer may have put it in place meanwhile)?
        if os.fstat(file.fileno()).st_ino != path.stat().st_ino:
            return False
        path.unlink()
        return True
