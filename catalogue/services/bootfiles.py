"""What is inside boot and custom init images: filesystems, and a boot image's boot files.

A version of a ``boot`` image is a small boot partition: a FAT (12, 16 or 32)
or ext2/3/4 filesystem holding, in its root or in ``boot/``:

* the kernel (required): ``vmlinuz``, ``bzImage``, ``Image`` or ``kernel``;
* the initrd (optional): ``initrd.img``, ``initrd`` or ``initramfs.img``;
* the kernel command line (optional): ``cmdline`` or ``cmdline.txt``, whose
  lines are joined with spaces.

The first name found wins (root before ``boot/``; FAT names match whatever
their case). The files are read with mtools (``mdir``, ``mcopy``) or e2fsprogs
(``debugfs``) — no mount, no root — and only under these names: nothing read
from the image ever becomes a path on the server. They are extracted once per
image content into ``BAAS_BOOT_CACHE_DIR/<image uuid>/<sha256>/``, streamed,
each at most ``BAAS_BOOT_IMAGE_MAX_SIZE`` bytes, in a temporary directory
renamed into place when complete (so a reader never sees half a kernel).

A custom init image is a small filesystem too (FAT, ext or ISO 9660, found
by its label on the flashed machine); :func:`filesystem_kind` recognises them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from django.conf import settings

from catalogue.models import Compression, Version
from catalogue.services.codecs import raw_reader
from catalogue.storage import get_storage
from diskimage import CHUNK

KERNEL_NAMES = ("vmlinuz", "bzImage", "Image", "kernel")
INITRD_NAMES = ("initrd.img", "initrd", "initramfs.img")
CMDLINE_NAMES = ("cmdline", "cmdline.txt")
DIRECTORIES = ("", "boot")
KERNEL, INITRD, CMDLINE = "vmlinuz", "initrd.img", "cmdline"  # their names in the cache
CMDLINE_MAX = 4096  # bytes; Linux takes at most 2048 on x86, more elsewhere
# Enough of an image to recognise its filesystem (ISO 9660's descriptor is at 32 KiB).
HEAD_BYTES = 0x8000 + 8
TOOL_TIMEOUT = 300  # seconds for one mtools or debugfs run
# Control characters other than tab and newline (which become spaces on a command line).
_SAFE_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class BootImageError(Exception):
    """The version is not a usable boot partition; the message says why, for a person."""


def filesystem_kind(head: bytes) -> str | None:
    """``fat``, ``ext`` or ``iso9660`` from an image's first bytes (``HEAD_BYTES``), else None."""
    boot_sector = len(head) >= 512 and head[510:512] == b"\x55\xaa"
    if boot_sector and (head[54:57] == b"FAT" or head[82:87] == b"FAT32"):
        return "fat"
    if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
        return "ext"
    if head[0x8001:0x8006] == b"CD001":
        return "iso9660"
    return None


def version_head(version: Version) -> bytes:
    """The first ``HEAD_BYTES`` raw bytes of a version (decompressed if stored compressed)."""
    with _raw_open(version) as raw:
        return _read_exactly(raw, HEAD_BYTES)


def _raw_open(version: Version) -> BinaryIO:
    stored = get_storage().open_read(version.image_id, version.number, version.stored_compression)
    return raw_reader(stored, version.stored_compression)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := stream.read(size - len(data))):
        data += chunk
    return data


# --- Reading one filesystem ---------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BootImageError(f"The server cannot read boot images: {name} is not installed.")
    return path


def _tool_env() -> dict[str, str]:
    # mtools refuses filesystems whose geometry looks odd unless told to skip the check.
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(  # noqa: S603 - fixed programs, our own file, names we chose
            args, capture_output=True, timeout=TOOL_TIMEOUT, check=False, env=_tool_env()
        )
    except subprocess.TimeoutExpired:
        raise BootImageError(f"Reading the boot image took over {TOOL_TIMEOUT} s.") from None


class _Fat:
    """A FAT filesystem image, read with mtools; names match whatever their case."""

    def __init__(self, path: Path):
        self.path = str(path)

    def files(self, directory: str) -> dict[str, int | None]:
        done = _run([_tool("mdir"), "-b", "-i", self.path, f"::/{directory}"])
        if done.returncode != 0:
            return {}
        names: dict[str, int | None] = {}
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            name = line.rsplit("/", 1)[-1]
            if name and not line.endswith("/"):  # directories end with "/"
                names[name.lower()] = None
        return names

    def key(self, name: str) -> str:
        return name.lower()

    def reader(self, path: str) -> list[str]:
        return [_tool("mcopy"), "-n", "-i", self.path, f"::/{path}", "-"]


class _Ext:
    """An ext2/3/4 filesystem image, read with debugfs; regular files only."""

    def __init__(self, path: Path):
        self.path = str(path)

    def files(self, directory: str) -> dict[str, int | None]:
        done = _run([_tool("debugfs"), "-R", f"ls -p /{directory}", self.path])
        names: dict[str, int | None] = {}
        # "/inode/mode/uid/gid/name/size/" per entry; regular files have mode 100xxx.
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            fields = line.split("/")
            if len(fields) == 8 and fields[2].startswith("100") and fields[6].isdigit():
                names[fields[5]] = int(fields[6])
        return names

    def key(self, name: str) -> str:
        return name

    def reader(self, path: str) -> list[str]:
        return [_tool("debugfs"), "-R", f"cat /{path}", self.path]


def _copy_out(command: list[str], target: Path, limit: int, expected: int | None) -> int:
    """Stream a tool's output into ``target``, at most ``limit`` bytes; the bytes copied."""
    with subprocess.Popen(  # noqa: S603 - fixed programs, our own file, names we chose
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_tool_env()
    ) as process:
        timer = threading.Timer(TOOL_TIMEOUT, process.kill)
        timer.start()
        try:
            copied = _stream(process.stdout, target, limit)
        except BaseException:
            process.kill()
            raise
        finally:
            status = process.wait()
            timer.cancel()
    if status != 0 or (expected is not None and copied != expected):
        raise BootImageError(f"{target.name} could not be read from the boot image.")
    return copied


def _stream(source: IO[bytes] | None, target: Path, limit: int) -> int:
    assert source is not None  # the tool was started with stdout=PIPE
    copied = 0
    with target.open("xb") as out:
        while chunk := source.read(CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise BootImageError(
                    f"{target.name} in the boot image is larger than {limit} bytes."
                )
            out.write(chunk)
    return copied


def _find(fs: _Fat | _Ext, names: tuple[str, ...]) -> tuple[str, int | None] | None:
    """The path (``boot/vmlinuz``) and size of the first of ``names`` present, else None."""
    for directory in DIRECTORIES:
        listed = fs.files(directory)
        for name in names:
            key = fs.key(name)
            if key in listed:
                return (f"{directory}/{name}" if directory else name), listed[key]
    return None


def cmdline_normalise(text: str) -> str:
    """One line: the file's lines joined by single spaces, without control characters.

    The command line goes into an iPXE script: a newline would start a command
    of its own there.
    """
    return " ".join(_SAFE_TEXT.sub(" ", text).split())


def _extract(source: Path, kind: str, into: Path, limit: int) -> None:
    fs = _Fat(source) if kind == "fat" else _Ext(source)
    kernel = _find(fs, KERNEL_NAMES)
    if kernel is None:
        raise BootImageError(
            "The boot image holds no kernel: put it at /vmlinuz (or /boot/vmlinuz; also "
            f"accepted: {', '.join(KERNEL_NAMES[1:])})."
        )
    _copy_out(fs.reader(kernel[0]), into / KERNEL, limit, kernel[1])
    initrd = _find(fs, INITRD_NAMES)
    if initrd is not None:
        _copy_out(fs.reader(initrd[0]), into / INITRD, limit, initrd[1])
    cmdline = _find(fs, CMDLINE_NAMES)
    text = ""
    if cmdline is not None:
        _copy_out(fs.reader(cmdline[0]), into / "cmdline.raw", CMDLINE_MAX, cmdline[1])
        text = (into / "cmdline.raw").read_bytes().decode("utf-8", "replace")
        (into / "cmdline.raw").unlink()
    (into / CMDLINE).write_text(cmdline_normalise(text))


# --- The boot files of a version ------------------------------------------------------


@dataclass(frozen=True)
class BootFiles:
    """A boot image's extracted files, in their cache directory."""

    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL

    @property
    def initrd(self) -> Path | None:
        path = self.directory / INITRD
        return path if path.exists() else None

    @property
    def cmdline(self) -> str:
        return (self.directory / CMDLINE).read_text()

    def path(self, name: str) -> Path | None:
        """``vmlinuz`` or ``initrd.img``, if this boot image has it."""
        if name == KERNEL:
            return self.kernel
        if name == INITRD:
            return self.initrd
        return None


def cache_dir(image_uuid: uuid.UUID | str, sha256: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a SHA-256: {sha256!r}")
    return Path(settings.BAAS_BOOT_CACHE_DIR) / str(uuid.UUID(str(image_uuid))) / sha256


def boot_files_extract(
    *, image_uuid: uuid.UUID | str, sha256: str, path: Path, compression: str
) -> BootFiles:
    """The boot files of one boot image content, extracted now unless cached.

    ``path`` is the image's file as stored (in ``compression``; decompressed
    to a scratch file first when compressed), ``sha256`` its raw bytes'.
    Raises BootImageError when it is not a boot partition BAAS can boot.
    """
    final = cache_dir(image_uuid, sha256)
    if (final / KERNEL).exists():
        return BootFiles(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=final.parent))
    try:
        source = _raw_file(path, compression, scratch)
        files = scratch / "files"
        files.mkdir()
        _extract(source, _boot_filesystem(source), files, settings.BAAS_BOOT_IMAGE_MAX_SIZE)
        try:
            os.rename(files, final)
        except OSError:  # extracted meanwhile by someone else: theirs is as good
            if not (final / KERNEL).exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BootFiles(final)


def boot_files_for(version: Version) -> BootFiles:
    """The boot files of a stored version of a boot image (see ``boot_files_extract``)."""
    if version.size > settings.BAAS_BOOT_IMAGE_MAX_SIZE:
        raise BootImageError(_too_large(version.size))
    compression = version.stored_compression
    return boot_files_extract(
        image_uuid=version.image_id,
        sha256=version.sha256,
        path=get_storage().version_path(version.image_id, version.number, compression),
        compression=compression,
    )


def _too_large(size: int) -> str:
    return (
        f"A boot image is a small boot partition: at most {settings.BAAS_BOOT_IMAGE_MAX_SIZE} "
        f"bytes, not {size}."
    )


def _boot_filesystem(path: Path) -> str:
    with path.open("rb") as handle:
        kind = filesystem_kind(_read_exactly(handle, HEAD_BYTES))
    if kind not in ("fat", "ext"):
        raise BootImageError(
            "A boot image is a FAT or ext2/3/4 filesystem (a boot partition) holding the "
            "kernel; this one is neither (an empty image?)."
        )
    return kind


def _raw_file(path: Path, compression: str, scratch: Path) -> Path:
    """The raw bytes of a stored file as a file: itself, or decompressed (sparse) in scratch."""
    if compression == Compression.NONE:
        return path
    target = scratch / "raw.img"
    limit = settings.BAAS_BOOT_IMAGE_MAX_SIZE
    written = 0
    with raw_reader(path.open("rb"), compression) as raw, target.open("wb") as out:
        while chunk := raw.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise BootImageError(_too_large(written))
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        out.truncate(written)
    return target


def boot_cache_forget(*, image_uuid: uuid.UUID | str, sha256s: Iterable[str] | None = None) -> None:
    """Remove an image's extracted boot files: all of them (the image was deleted), or
    those of the contents ``sha256s`` (versions deleted) that no version left holds."""
    if sha256s is None:
        shutil.rmtree(Path(settings.BAAS_BOOT_CACHE_DIR) / str(uuid.UUID(str(image_uuid))), True)
        return
    left = set(Version.objects.filter(image_id=image_uuid).values_list("sha256", flat=True))
    for sha256 in set(sha256s) - left:
        if sha256:
            shutil.rmtree(cache_dir(image_uuid, sha256), True)
