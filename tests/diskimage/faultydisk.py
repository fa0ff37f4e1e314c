"""A disk with a bad sector: a FUSE file system (``mfusepy`` on libfuse3) serving one file,
``disk.img``, whose bytes are a real file's, except that reading any byte of one range
fails with ``EIO``, as a failing disk's read does, before and after it is written (writes
go through to the real file). Root only (it mounts); skipped otherwise.

    with faulty_disk(tmp_path, backing, bad=(start, end)) as path: ...

Run as ``python -m tests.diskimage.faultydisk BACKING MOUNTPOINT START END`` it serves in
the foreground until unmounted; :func:`faulty_disk` does that in a child process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NAME = "disk.img"
REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def faulty_disk(directory: Path, backing: Path, bad: tuple[int, int]) -> Iterator[Path]:
    """``backing`` served as ``directory``/mnt/disk.img, ``bad`` unreadable."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounting a FUSE file system needs root and /dev/fuse")
    try:
        import mfusepy  # noqa: F401  # loads libfuse3 at import
    except (ImportError, OSError) as exc:
        pytest.skip(f"needs mfusepy and libfuse3 (Debian: libfuse3-3): {exc}")
    mount = directory / "mnt"
    mount.mkdir()
    log = directory / "fuse.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.diskimage.faultydisk", str(backing), str(mount),
             str(bad[0]), str(bad[1])],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (mount / NAME).exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the FUSE file system did not come up: {log.read_text()}")
            time.sleep(0.05)
        yield mount / NAME
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        try:
            server.wait(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
                subprocess.run(["umount", "-l", str(mount)], check=False)


class Faulty:
    """The file system's operations (mixed into ``mfusepy.Operations`` by :func:`serve`,
    which imports it: this module is imported where libfuse may be missing)."""

    use_ns = True

    def __init__(self, backing: Path, bad: tuple[int, int]) -> None:
        self.fd = os.open(backing, os.O_RDWR)
        self.bad = bad

    def getattr(self, path: str, fh: int | None = None) -> dict:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == f"/{NAME}":
            size = os.fstat(self.fd).st_size
            return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size}
        raise OSError(errno.ENOENT, "no such file")

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", NAME]

    def open(self, path: str, flags: int) -> int:
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if offset < self.bad[1] and offset + size > self.bad[0]:
            raise OSError(errno.EIO, "a bad sector")
        return os.pread(self.fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.ftruncate(self.fd, length)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(self.fd)


def serve(backing: Path, mount: Path, bad: tuple[int, int]) -> None:
    import mfusepy

    class Operations(Faulty, mfusepy.Operations):
        pass

    mfusepy.FUSE(Operations(backing, bad), str(mount), foreground=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), (int(sys.argv[3]), int(sys.argv[4])))
