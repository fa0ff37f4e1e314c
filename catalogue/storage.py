"""Where image bytes live: ``<root>/<image uuid>/<n>.img[.zst|.gz]``.

One small interface — open for write, commit, open for read, delete, usage —
so a second backend can be added without touching views or services. The local
filesystem backend writes every version the same way: into a temporary
``.part`` file in the image's own directory (the same filesystem, so nothing is
ever copied twice), leaving zero blocks as holes, then ``fsync`` and an atomic
link into place that never overwrites an existing version. Only after that may
the caller create the database row.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from django.conf import settings

from diskimage import BLOCK
from diskimage.holes import zero_block_runs

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

logger = logging.getLogger(__name__)

# Writeback of what a pending file received is started every this many bytes.
WRITEBACK_EVERY = 32 << 20
SYNC_FILE_RANGE_WRITE = 2
SUFFIXES = {"none": ".img", "gzip": ".img.gz", "zstd": ".img.zst"}
MAP_SUFFIX = ".map.json"  # a version's data map (diskimage.datamap), beside its file
PART_SUFFIX = ".part"
# One lock file per image, outside the image directories, whose byte n is held (shared)
# by every background job working on version n: a job whose process died holds nothing.
LOCKS_DIR = ".locks"


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


def _stored(path: Path) -> StoredFile:
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


def _fsync_dir(path: Path) -> None:
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
        self.path = directory / f".{uuid.uuid4().hex}{PART_SUFFIX}"
        self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed in commit/abort
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # new and ours: never waits
        self.position = 0  # logical bytes received, holes included
        self._carry = b""  # an unaligned tail not yet written
        self._unsynced = 0  # bytes written since writeback was last started
        self._done = False

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
        self._unsynced += len(view)
        while view:
            written = self._file.write(view)
            view = view[written:]
        if self._unsynced >= WRITEBACK_EVERY:
            self._unsynced = 0
            start_writeback(self._file.fileno())

    def _write_sparse(self, data: bytes | bytearray, start: int, end: int) -> None:
        """Write ``data[start:end]``, whole blocks, seeking over those that are all zeros."""
        view = memoryview(data)
        written = start  # what precedes is on disk, or seeked over
        for hole, zeros in zero_block_runs(data, start, end):
            self._write_all(view[written:hole])
            self._file.seek(zeros - hole, os.SEEK_CUR)
            written = zeros
        self._write_all(view[written:end])

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``, at or past everything written so far: what is
        skipped stays a hole. For a writer told where the data is (a DataMapper's
        ``on_data``); do not mix with :meth:`write`."""
        if offset < self.position:
            raise ValueError(f"write at {offset}, before the {self.position} bytes written")
        try:
            self._file.seek(offset)
            self._write_all(memoryview(data))
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise
        self.position = offset + len(data)

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
            # Trailing holes: the size must be the logical size, not the last byte written.
            self._file.truncate(self.position)
            os.fsync(self._file.fileno())
            # Put in place while the lock is held: the purge never sees it unheld.
            if replace:
                os.replace(self.path, final)
            else:
                os.link(self.path, final)
                os.unlink(self.path)
            self._file.close()
        except FileExistsError as exc:
            self.abort()
            raise VersionExists(f"{final.name} already exists") from exc
        except OSError as exc:
            self.abort()
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise
        _fsync_dir(final.parent)
        self._done = True
        return _stored(final)

    def abort(self) -> None:
        self._done = True
        self.path.unlink(missing_ok=True)  # before the lock goes with the descriptor
        if not self._file.closed:
            self._file.close()


class LocalStorage:
    """Images on a local (or shared, POSIX) filesystem under ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def image_dir(self, image_uuid: uuid.UUID | str) -> Path:
        # uuid.UUID() both validates and normalises: no path is built from raw input.
        return self.root / str(uuid.UUID(str(image_uuid)))

    def version_path(self, image_uuid: uuid.UUID | str, number: int, compression: str) -> Path:
        if not isinstance(number, int) or number < 0:
            raise ValueError(f"bad version number {number!r}")
        return self.image_dir(image_uuid) / f"{number}{SUFFIXES[compression]}"

    def version_file(
        self, image_uuid: uuid.UUID | str, number: int, compression: str
    ) -> Path | None:
        """The file of version ``number`` in ``compression``, if this store has it; else None."""
        path = self.version_path(image_uuid, number, compression)
        return path if path.exists() else None

    def link_version(
        self, image_uuid: uuid.UUID | str, number: int, into: LocalStorage
    ) -> Path | None:
        """Hard-link the stored raw file of version ``number`` to the same place in the store
        ``into`` (versions never change in place); its path there, or None when the file is
        not raw here or the stores are on different filesystems."""
        source = self.version_path(image_uuid, number, "none")
        target = into.version_path(image_uuid, number, "none")
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(source, target)
        except FileExistsError:
            return target
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOENT):
                return None
            raise
        return target

    def open_write(self, image_uuid: uuid.UUID, *, sparse: bool = True) -> PendingFile:
        """A new pending file for ``image_uuid``. Raises StorageError if the root is missing."""
        if not self.root.is_dir():
            raise StorageError(f"The image root {self.root} does not exist.")
        try:
            return PendingFile(self, image_uuid, sparse=sparse)
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise

    def create_sparse(self, image_uuid: uuid.UUID, number: int, size: int) -> StoredFile:
        """An empty raw version of ``size`` bytes: instant, no blocks allocated."""
        with self.open_write(image_uuid) as pending:
            pending.position = size
            return pending.commit(number)

    def served_name(self, stream: BinaryIO) -> str:
        """The name under the root of an open file of this storage, for a front server
        that serves the root itself (X-Accel-Redirect). Raises ValueError for a file
        outside the root."""
        path = Path(os.path.realpath(stream.name))
        return path.relative_to(os.path.realpath(self.root)).as_posix()

    def open_read(self, image_uuid: uuid.UUID, number: int, compression: str) -> BinaryIO:
        return open(self.version_path(image_uuid, number, compression), "rb")

    def stat(self, image_uuid: uuid.UUID, number: int, compression: str) -> StoredFile:
        return _stored(self.version_path(image_uuid, number, compression))

    def delete_version(self, image_uuid: uuid.UUID, number: int, compression: str) -> None:
        self.version_path(image_uuid, number, compression).unlink(missing_ok=True)

    def beside_path(self, image_uuid: uuid.UUID | str, number: int, suffix: str) -> Path:
        """``<n><suffix>``: a file derived from version ``number`` (its data map, its raw
        rendition…), beside the version's own file."""
        if not isinstance(number, int) or number < 0:
            raise ValueError(f"bad version number {number!r}")
        if not suffix.startswith(".") or "/" in suffix:
            raise ValueError(f"bad suffix {suffix!r}")
        return self.image_dir(image_uuid) / f"{number}{suffix}"

    def map_path(self, image_uuid: uuid.UUID | str, number: int) -> Path:
        return self.beside_path(image_uuid, number, MAP_SUFFIX)

    def map_write(self, image_uuid: uuid.UUID | str, number: int, payload: bytes) -> None:
        """Store a version's data map: written aside, fsynced, renamed into place.

        A map is derived from the version's bytes, so a newer one replaces an
        older one (a map left by a crashed upload under the same number).
        """
        final = self.map_path(image_uuid, number)
        part = final.parent / f".{uuid.uuid4().hex}{PART_SUFFIX}"
        try:
            with open(part, "xb") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # see PendingFile
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
                os.replace(part, final)
        except OSError as exc:
            part.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise StorageFull("No space left in the image store.") from exc
            raise

    def map_read(self, image_uuid: uuid.UUID | str, number: int) -> bytes | None:
        try:
            return self.map_path(image_uuid, number).read_bytes()
        except FileNotFoundError:
            return None

    def delete_map(self, image_uuid: uuid.UUID | str, number: int) -> None:
        self.map_path(image_uuid, number).unlink(missing_ok=True)

    def delete_image(self, image_uuid: uuid.UUID) -> None:
        shutil.rmtree(self.image_dir(image_uuid), ignore_errors=True)
        self._lock_path(image_uuid).unlink(missing_ok=True)

    def usage(self, image_uuid: uuid.UUID | None = None) -> int:
        """Bytes allocated on disk, for one image or the whole root."""
        top = self.image_dir(image_uuid) if image_uuid else self.root
        return sum(path.stat().st_blocks * 512 for path in _files(top))

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def capacity(self) -> tuple[int, int]:
        """``(total, free)``: bytes of the root's file system, and those still free."""
        usage = shutil.disk_usage(self.root)
        return usage.total, usage.free

    def check_writable(self) -> None:
        """Raise OSError, naming the root, unless it is a directory this process may write."""
        if not self.root.is_dir():
            raise OSError(f"{self.root} does not exist")
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")

    # --- Debris of crashes ---------------------------------------------------------

    def purge_stale(self, older_than_seconds: float) -> list[Path]:
        """Remove the ``.part`` files of writers that died (a server or worker killed
        mid-write): those no process holds locked (see :class:`PendingFile`) and untouched
        for ``older_than_seconds`` (a grace for a writer between creating and locking it).
        A live writer's file is kept however old it is."""
        cutoff = time.time() - older_than_seconds
        removed = []
        for path in self.root.glob(f"*/.*{PART_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff and _remove_unheld(path):
                    removed.append(path)
        return removed

    def clear_debris(self, image_uuid: uuid.UUID | str, number: int) -> list[Path]:
        """Remove the files stored under version ``number`` (``<n>.img``, its map, any
        ``<n>.…``) of an image that has no row for it (left by a crash between putting a
        file in place and creating its row); return them. The caller holds the lock on
        the image's row and knows the number is free."""
        self.version_path(image_uuid, number, "none")  # checks the number
        removed = []
        for path in sorted(self.image_dir(image_uuid).glob(f"{number}.*")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
                logger.warning("Removed %s: a file without a version, left by a crash", path)
        return removed

    @contextlib.contextmanager
    def scratch_file(self, image_uuid: uuid.UUID | str, suffix: str = "") -> Iterator[Path]:
        """A new ``.part`` file in the image's directory for a program that writes by path
        (qemu-img), held as a live writer's (see :meth:`held_part`) and removed at the end."""
        directory = self.image_dir(image_uuid)
        directory.mkdir(exist_ok=True)
        with self.held_part(directory, suffix) as path:
            yield path

    @contextlib.contextmanager
    def held_part(self, directory: Path, suffix: str = "") -> Iterator[Path]:
        """A new, empty ``.part`` file in ``directory``, locked as a live writer's (see
        :class:`PendingFile`) while the block runs, for a writer that writes it by path (a
        program such as qemu-img); removed at the end unless renamed away meanwhile."""
        path = directory / f".{uuid.uuid4().hex}{suffix}{PART_SUFFIX}"
        with open(path, "xb") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)

    # --- Background jobs' locks ----------------------------------------------------

    def _lock_path(self, image_uuid: uuid.UUID | str) -> Path:
        return self.root / LOCKS_DIR / str(uuid.UUID(str(image_uuid)))

    @contextlib.contextmanager
    def job_lock(self, image_uuid: uuid.UUID | str, number: int) -> Iterator[None]:
        """Held by a background job while it works on version ``number``, by one job at a
        time (another waits: a version's processing runs one step after the other);
        :meth:`job_running` sees it. A job whose process dies holds nothing (the kernel
        drops the lock). Waits while a check holds it an instant."""
        path = self._lock_path(image_uuid)
        path.parent.mkdir(exist_ok=True)
        with open(path, "a+b") as file:
            fcntl.lockf(file.fileno(), fcntl.LOCK_EX, 1, number)
            yield

    def job_running(self, image_uuid: uuid.UUID | str, number: int) -> bool:
        """Whether a live process holds :meth:`job_lock` for version ``number``.

        Asked from another process than the jobs' (POSIX record locks never conflict
        within one process)."""
        path = self._lock_path(image_uuid)
        try:
            file = open(path, "rb+")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return False
        with file:
            try:
                fcntl.lockf(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, number)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return True
                raise
            fcntl.lockf(file.fileno(), fcntl.LOCK_UN, 1, number)
            return False

    # --- Audit -----------------------------------------------------------------------

    def stored_names(self) -> Iterator[tuple[str, str]]:
        """``(image directory, file name)`` of every file under the root but the locks."""
        if not self.root.is_dir():
            return
        for directory in self.root.iterdir():
            if directory.name == LOCKS_DIR or not directory.is_dir():
                continue
            for path in directory.iterdir():
                yield directory.name, path.name


def _remove_unheld(path: Path) -> bool:
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


def _files(top: Path) -> Iterator[Path]:
    if not top.exists():
        return
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            yield Path(dirpath) / name


def get_storage() -> LocalStorage:
    """The configured image store (``BAAS_DISK_ROOT``)."""
    return LocalStorage(settings.BAAS_DISK_ROOT)
