"""The local filesystem store: ``<root>/<image uuid>/<n>.img[.zst|.gz]``.

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
import errno
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings

from catalogue.storage import shared
from catalogue.storage.names import (
    LOCKS_DIR,
    MAP_SUFFIX,
    PART_SUFFIX,
    RAW_MAP_SUFFIX,
    RAW_SUFFIX,
    RESUMABLE_PREFIX,
    SUFFIXES,
    StoredName,
    parsed_name,
    part_name,
)
from catalogue.storage.pending import (
    AdoptedFile,
    PendingFile,
    StorageError,
    StorageFull,
    StoredFile,
    fsync_dir,
    is_disk_full,
    remove_unheld,
    stored_file,
)
from catalogue.storage.resumable import ResumablePart
from diskimage.extents import Candidate

logger = logging.getLogger(__name__)


class LocalStorage:
    """Images on a local (or shared, POSIX) filesystem under ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def image_dir(self, image_uuid: uuid.UUID | str) -> Path:
        # uuid.UUID() both validates and normalises: no path is built from raw input.
        return self.root / str(uuid.UUID(str(image_uuid)))

    def version_path(self, image_uuid: uuid.UUID | str, number: int, compression: str) -> Path:
        return self.image_dir(image_uuid) / self.version_name(number, compression)

    @staticmethod
    def version_name(number: int, compression: str) -> str:
        """``<n>.img[.gz|.zst]``: the name of version ``number``'s file in ``compression``."""
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"bad version number {number!r}")
        if compression not in SUFFIXES:
            raise ValueError(f"bad compression {compression!r}")
        return f"{number}{SUFFIXES[compression]}"

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

    def adopt(self, image_uuid: uuid.UUID, source: Path) -> PendingFile | None:
        """``source``, a finished raw file, moved in as ``image_uuid``'s pending file
        (:class:`AdoptedFile`: its bytes are not copied); None when it cannot be moved
        (another filesystem: the caller copies it as any upload)."""
        if not self.root.is_dir():
            raise StorageError(f"The image root {self.root} does not exist.")
        try:
            return AdoptedFile(self, image_uuid, source)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise

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

    def resumable_part(self, image_uuid: uuid.UUID, token: str) -> ResumablePart:
        """The bytes received so far of the resumable upload ``token`` to the image."""
        return ResumablePart(self, image_uuid, token)

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
        return stored_file(self.version_path(image_uuid, number, compression))

    def delete_version(self, image_uuid: uuid.UUID, number: int, compression: str) -> None:
        self.version_path(image_uuid, number, compression).unlink(missing_ok=True)

    def beside_path(self, image_uuid: uuid.UUID | str, number: int, suffix: str) -> Path:
        """``<n><suffix>``: a file derived from version ``number`` (its data map, its raw
        rendition…), beside the version's own file."""
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"bad version number {number!r}")
        if not suffix.startswith(".") or "/" in suffix:
            raise ValueError(f"bad suffix {suffix!r}")
        return self.image_dir(image_uuid) / f"{number}{suffix}"

    def map_path(self, image_uuid: uuid.UUID | str, number: int) -> Path:
        return self.beside_path(image_uuid, number, MAP_SUFFIX)

    def has_map(self, image_uuid: uuid.UUID | str, number: int) -> bool:
        """Whether version ``number`` has its data map stored."""
        return self.map_path(image_uuid, number).exists()

    def map_write(self, image_uuid: uuid.UUID | str, number: int, payload: bytes) -> None:
        """Store a version's data map: written aside, fsynced, renamed into place.

        A map is derived from the version's bytes, so a newer one replaces an
        older one (a map left by a crashed upload under the same number).
        """
        self._write_beside(image_uuid, number, MAP_SUFFIX, payload)

    def _write_beside(
        self, image_uuid: uuid.UUID | str, number: int, suffix: str, payload: bytes
    ) -> None:
        """``<n><suffix>`` holds ``payload``: written to a held ``.part``, fsynced, renamed."""
        final = self.beside_path(image_uuid, number, suffix)
        part = final.parent / part_name()
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

    # --- Raw renditions of qcow2 versions ------------------------------------------

    def rendition_store(
        self, image_uuid: uuid.UUID | str, number: int, part: Path, map_payload: bytes
    ) -> None:
        """Put the raw rendition of version ``number`` in place: its map (``map_payload``)
        first, then ``part``, a fsynced scratch file of this image (:meth:`scratch_file`),
        renamed to ``<n>.raw``; the directory is fsynced. Replaces an older rendition."""
        final = self.beside_path(image_uuid, number, RAW_SUFFIX)
        if part.parent != final.parent or not part.name.endswith(PART_SUFFIX):
            raise ValueError(f"{part} is not a scratch file of image {image_uuid}")
        self._write_beside(image_uuid, number, RAW_MAP_SUFFIX, map_payload)
        os.replace(part, final)
        fsync_dir(final.parent)

    def has_rendition(self, image_uuid: uuid.UUID | str, number: int) -> bool:
        return self.beside_path(image_uuid, number, RAW_SUFFIX).exists()

    def open_rendition(self, image_uuid: uuid.UUID | str, number: int) -> BinaryIO:
        """The rendition of version ``number``, open for reading; FileNotFoundError if none."""
        return open(self.beside_path(image_uuid, number, RAW_SUFFIX), "rb")

    def rendition_map_read(self, image_uuid: uuid.UUID | str, number: int) -> bytes | None:
        try:
            return self.beside_path(image_uuid, number, RAW_MAP_SUFFIX).read_bytes()
        except FileNotFoundError:
            return None

    def delete_rendition(self, image_uuid: uuid.UUID | str, number: int) -> None:
        """Remove version ``number``'s rendition and its map (with its version's files)."""
        self.beside_path(image_uuid, number, RAW_SUFFIX).unlink(missing_ok=True)
        self.beside_path(image_uuid, number, RAW_MAP_SUFFIX).unlink(missing_ok=True)

    # --- Whole images -------------------------------------------------------------

    def prune_image_dir(self, image_uuid: uuid.UUID | str) -> None:
        """Remove the image's directory if it is empty (a file written for an image deleted
        meanwhile was removed): never one that holds a file another row may use."""
        with contextlib.suppress(OSError):
            self.image_dir(image_uuid).rmdir()

    def delete_image(self, image_uuid: uuid.UUID) -> None:
        shutil.rmtree(self.image_dir(image_uuid), ignore_errors=True)
        self._lock_path(image_uuid).unlink(missing_ok=True)

    def usage(self, image_uuid: uuid.UUID | None = None) -> int:
        """Bytes allocated on disk, for one image or the whole root."""
        top = self.image_dir(image_uuid) if image_uuid else self.root
        return sum(path.stat().st_blocks * 512 for path in _files(top))

    # --- Shared blocks (reflinks): see catalogue.storage.shared ------------------------

    def can_share(self) -> bool:
        """Whether versions under this root can share blocks (XFS reflink=1, btrfs)."""
        return shared.can_share(self)

    def version_share(
        self,
        image_uuid: uuid.UUID | str,
        number: int,
        compression: str,
        *,
        base: int | None,
        candidates: Iterable[Candidate],
    ) -> int:
        """Version ``number`` shares with version ``base`` the candidates the kernel finds
        equal (``FIDEDUPERANGE``), recorded on its file; the bytes shared. The caller
        holds the version's job lock. See :func:`catalogue.storage.shared.version_share`."""
        return shared.version_share(
            self, image_uuid, number, compression, base=base, candidates=candidates
        )

    def share_record(
        self, image_uuid: uuid.UUID | str, number: int, compression: str
    ) -> dict[str, Any] | None:
        """What :meth:`version_share` recorded on the version's file, or None."""
        return shared.share_record(self, image_uuid, number, compression)

    def held_bytes(self, files: Iterable[tuple[uuid.UUID | str, int, str]]) -> int:
        """Bytes the versions' files ``(image, number, compression)`` hold on the disk
        together, each shared block once."""
        return shared.held_bytes(self, files)

    def shared_bytes(self, image_uuid: uuid.UUID | str, number: int, compression: str) -> int:
        """Bytes of the version's file that other files hold too."""
        return shared.shared_bytes(self, image_uuid, number, compression)

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
            if path.name.startswith(RESUMABLE_PREFIX):
                continue  # a resumable upload's: its row says when it goes
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff and remove_unheld(path):
                    removed.append(path)
        return removed

    def remove_resumable_parts(self, *, keep: set[str], older_than_seconds: float) -> list[Path]:
        """Remove the files of resumable uploads (:class:`ResumablePart`) whose token is not
        in ``keep`` (their row is gone) and untouched for ``older_than_seconds``."""
        cutoff = time.time() - older_than_seconds
        removed = []
        for path in self.root.glob(f"*/{RESUMABLE_PREFIX}*{PART_SUFFIX}"):
            token = path.name[len(RESUMABLE_PREFIX) : -len(PART_SUFFIX)]
            with contextlib.suppress(FileNotFoundError):
                if token not in keep and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
                    logger.warning("Removed %s: a resumable upload's bytes without a row", path)
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
        path = directory / part_name(suffix)
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

    def stored_entries(self) -> Iterator[StoredName]:
        """Every file under the root but the locks, read from its name: the version it is
        of or beside, in which compression if it is the version's own file, a ``.part``."""
        for image, name in self.stored_names():
            yield parsed_name(image, name)


def _files(top: Path) -> Iterator[Path]:
    if not top.exists():
        return
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            yield Path(dirpath) / name


def get_storage() -> LocalStorage:
    """The configured image store (``BAAS_DISK_ROOT``)."""
    return LocalStorage(settings.BAAS_DISK_ROOT)
