"""What a container image's layers may hold, checked before anything is unpacked.

Each layer (a tar, plain, gzip or zstd) is read as a stream. A layer is refused,
with the member named, when it holds an absolute path, a path or hard link that
leaves the root (``..``), a device node (a system image's ``/dev`` is made by the
kernel), or a set-user-ID file not owned by root. Whiteouts (``.wh.<name>``,
``.wh..wh..opq``) are applied in order, so the result also says who owns each
path of the final tree (a rootless unpack cannot set owners; the filesystem
gets them afterwards), and the unpacked size is counted as the layers stream:
past ``limit`` the scan stops at once.
"""

from __future__ import annotations

import gzip
import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import zstandard

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
READ = 1 << 20  # read, and skip file contents, a MiB at a time (not tarfile's 10 KiB)


class LayerRefused(Exception):
    """A layer holds something a system image may not; the message names it."""


class LayersTooLarge(Exception):
    """The layers unpack to more than the limit."""

    def __init__(self, size: int):
        self.size = size
        super().__init__(size)


@dataclass
class Tree:
    """The final tree after every layer: owner of each path (relative, no leading ./)."""

    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    unpacked: int = 0  # bytes of every file of every layer (an upper bound of the tree)

    def remove(self, path: str) -> None:
        self.owners.pop(path, None)
        if path not in self.dirs:
            return
        self.dirs.discard(path)
        prefix = path + "/"
        self.dirs -= {d for d in self.dirs if d.startswith(prefix)}
        for name in [n for n in self.owners if n.startswith(prefix)]:
            del self.owners[name]

    def clear_below(self, directory: str) -> None:
        prefix = directory + "/" if directory else ""
        self.dirs -= {d for d in self.dirs if d.startswith(prefix) and d != directory}
        for name in [n for n in self.owners if n.startswith(prefix) and n != directory]:
            del self.owners[name]


def open_layer(path: Path, media_type: str) -> IO[bytes]:
    """The layer's tar stream, decompressed as its media type says."""
    if media_type.endswith("gzip"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    raw = open(path, "rb")  # noqa: SIM115 (closed with the stream that wraps it)
    if media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def clean_name(name: str, what: str = "path") -> str:
    """The member's path relative to the root; LayerRefused if absolute or escaping."""
    if name.startswith("/"):
        raise LayerRefused(f"holds the absolute {what} {name!r}")
    normal = posixpath.normpath(name)
    if normal == ".":
        return ""
    if normal == ".." or normal.startswith("../"):
        raise LayerRefused(f"holds the {what} {name!r}, which leads out of the root")
    return normal


def check_member(member: tarfile.TarInfo) -> str:
    """The member's clean path, or LayerRefused saying what is wrong with it."""
    name = clean_name(member.name)
    if member.ischr() or member.isblk():
        raise LayerRefused(
            f"holds the device node {name!r}: system images hold no device nodes "
            "(the kernel makes /dev)"
        )
    if member.islnk():
        clean_name(member.linkname, "hard link target")
    if member.mode & 0o4000 and member.uid != 0:
        raise LayerRefused(
            f"holds {name!r}, set-user-ID to user {member.uid}: only root's files may be"
        )
    return name


def scan_layer(
    stream: IO[bytes], tree: Tree, *, limit: int, progress: Callable[[], None] | None = None
) -> None:
    """Check one layer and apply it to ``tree``; raises LayerRefused, LayersTooLarge."""
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=READ) as tar:
            for count, member in enumerate(tar):
                _apply(member, tree)
                if tree.unpacked > limit:
                    raise LayersTooLarge(tree.unpacked)
                if progress is not None and count % 256 == 0:
                    progress()
    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
        raise LayerRefused(f"is not a readable tar: {exc}") from exc


def _apply(member: tarfile.TarInfo, tree: Tree) -> None:
    name = check_member(member)
    base = posixpath.basename(name)
    parent = posixpath.dirname(name)
    if base == OPAQUE:
        tree.clear_below(parent)
        return
    if base.startswith(WHITEOUT):
        tree.remove(posixpath.join(parent, base[len(WHITEOUT) :]))
        return
    if not member.isdir():
        tree.remove(name)  # a file replacing a directory replaces what it held
    else:
        tree.dirs.add(name)
    tree.owners[name] = (member.uid, member.gid)
    tree.unpacked += max(member.size, 0) + 512
