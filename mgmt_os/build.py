"""Build the BAAS management OS: a Debian kernel and an initramfs running ``baas-agent``.

    .venv/bin/python -m mgmt_os.build [--out var/mgmt-os] [--cache var/cache/mgmt-os]

Everything comes from Debian packages fetched with ``apt-get download`` (the host's
apt sources; no root needed): the kernel (``linux-image-cloud-amd64`` by default),
``busybox-static`` for the userland, Python 3.11 and the shared libraries it
needs, ``python3-zstandard`` (the agent decompresses ranges on every core),
``zstd`` for its decompression fallback, and the CA certificates. The agent is this
repository's ``agent/baas_agent`` and ``diskimage``, copied as they are at build time,
with ``blake3``, which Debian 12 lacks, from the build's own Python (``mgmt_os/wheels.py``).

Writes ``vmlinuz``, ``initrd.img`` (a zstd-compressed newc cpio, byte for byte the
same for the same inputs) and ``manifest.json`` to the output directory, and
does nothing when the inputs (package versions, /init, the agent's sources, this
script) have not changed since the last build. No Django here.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zstandard

from mgmt_os import wheels

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FORMAT = 1  # bump when the layout of the image changes in a way the inputs do not show
PYTHON = "python3.11"
KERNEL_DEFAULT = "linux-image-cloud-amd64"
ZSTD_LEVEL = 12  # 19 saves 1.7 MB of 13 and costs a minute per build

# Userland packages; the kernel package is resolved separately. Shared libraries
# are the closure of what python3.11, its extension modules and zstd link
# against: the build checks that nothing is loaded from the host.
PACKAGES = (
    "busybox-static",
    f"{PYTHON}-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
    "libzstd1",
    "liblz4-1",
    "libgcc-s1",  # blake3's Rust extension links libgcc_s
    "python3-zstandard",
    "zstd",
    "ca-certificates",
)

# Loaded by /init in dependency order (the build adds what they depend on).
# Modules built into the kernel, or absent from it, are skipped.
MODULES_DEFAULT = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "sd_mod")

# What the image does without: documentation, locales, the glibc character set
# converters, and the parts of Python the agent never uses (or whose libraries
# are not in the image).
PRUNE = (
    "usr/share",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/libexec",
    "etc/ca-certificates",
    "usr/sbin/update-ca-certificates",
    "usr/bin/pzstd",
    "usr/bin/zstdgrep",
    "usr/bin/zstdless",
)
PRUNE_PYTHON = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "sqlite3",
    "curses",
    "dbm",
    "venv",
    "unittest",
    "asyncio",
    "xmlrpc",
    "wsgiref",
    "pydoc.py",
    "_pydecimal.py",
    "EXTERNALLY-MANAGED",
    "__phello__",
)
PRUNE_DYNLOAD = re.compile(
    r"^(_asyncio|_curses|_curses_panel|readline|_sqlite3|_dbm|_gdbm|_crypt|nis|_test\w*|_ctypes_test"
    r"|xxlimited\w*|_xxtestfuzz|_xxsubinterpreters|audioop|ossaudiodev)\."
)

# The agent's packages: its own, and the disk image formats it shares with the server
# (``agent/diskimage`` links to the repository's ``diskimage``).
AGENT_PACKAGES = ("baas_agent", "diskimage")
# Its Python packages Debian 12 does not ship, copied from the build's own environment.
AGENT_WHEELS = ("blake3",)
# What the agent runs faster with (landing.py and verify.py fall back without them): the
# build fails if the image's Python cannot import them, and the manifest names their versions.
AGENT_ACCELERATORS = ("zstandard", "blake3")

# Imported in the image at build time, besides the agent itself: what the agent
# needs from the standard library (and what an operator debugging it uses).
PYTHON_CHECK_IMPORTS = (
    "argparse",
    "base64",
    "ctypes",
    "fcntl",
    "hashlib",
    "http.client",
    "json",
    "logging",
    "lzma",
    "mmap",
    "bz2",
    "gzip",
    "shutil",
    "signal",
    "socket",
    "ssl",
    "subprocess",
    "threading",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "zlib",
    *AGENT_ACCELERATORS,
    "concurrent.futures",
)


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Inputs:
    """Everything an image is made of: a change in any of these rebuilds it."""

    kernel_package: str
    packages: dict[str, str]  # name -> version, the kernel included
    modules: tuple[str, ...]
    init_sha256: str
    agent_sha256: str
    wheels: dict[str, str]  # name -> "version sha256" of what is copied from the build's Python
    build_sha256: str

    def key(self) -> str:
        blob = json.dumps(
            {
                "format": FORMAT,
                "kernel_package": self.kernel_package,
                "packages": self.packages,
                "modules": self.modules,
                "init": self.init_sha256,
                "agent": self.agent_sha256,
                "wheels": self.wheels,
                "build": self.build_sha256,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def log(message: str) -> None:
    print(f"mgmt-os: {message}", file=sys.stderr, flush=True)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    # Fixed commands (apt-cache, apt-get, dpkg-deb, the image's own binaries), no shell.
    return subprocess.run(args, check=False, capture_output=True, text=True, **kwargs)  # noqa: S603


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(root: Path) -> str:
    """A digest of the files under ``root`` (paths and contents), caches excluded."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.suffix == ".pyc":
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- Debian packages ---------------------------------------------------------------


def apt_show(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The control fields of the version ``apt-get download`` would fetch (local lists only).

    One ``apt-cache`` call: without apt's binary cache (as in Docker images),
    each call parses all package lists again, which takes seconds.
    """
    names = list(names)
    result = run(["apt-cache", "show", "--no-all-versions", *names])
    found: dict[str, dict[str, str]] = {}
    for stanza in result.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    missing = [name for name in names if name not in found]
    if missing:
        raise BuildError(
            f"apt knows no candidate for {', '.join(missing)}"
            + (f" ({result.stderr.strip()})" if result.stderr.strip() else "")
            + ". Run `apt-get update` (Debian 12 bookworm sources) and try again."
        )
    return found


def resolve_packages(kernel: str) -> tuple[str, dict[str, str]]:
    """The kernel package and the version of every package to fetch.

    A kernel meta package (``linux-image-cloud-amd64``) stands for the versioned
    package it depends on (``linux-image-6.1.0-…-cloud-amd64``).
    """
    fields = apt_show([kernel, *PACKAGES])
    versions = {name: info["Version"] for name, info in fields.items()}
    for dep in fields[kernel].get("Depends", "").split(","):
        match = re.fullmatch(r"\s*(linux-image-\d\S*)(?:\s*\(= ([^)]+)\))?\s*", dep)
        if match:
            name, version = match.groups()
            versions.pop(kernel)
            versions[name] = version or apt_show([name])[name]["Version"]
            return name, versions
    return kernel, versions


def deb_filename(name: str, version: str) -> str:
    return f"{name}_{version.replace(':', '%3a')}_"  # how apt names the file


def download(packages: dict[str, str], cache: Path) -> dict[str, Path]:
    """The .deb of each package at its version, fetched into ``cache`` if not there yet."""
    cache.mkdir(parents=True, exist_ok=True)

    def find(name: str, version: str) -> Path | None:
        found = sorted(cache.glob(deb_filename(name, version) + "*.deb"))
        return found[0] if found else None

    wanted = [f"{n}={v}" for n, v in sorted(packages.items()) if find(n, v) is None]
    if wanted:
        log(f"downloading {len(wanted)} packages with apt-get download")
        result = run(["apt-get", "download", "-q", *wanted], cwd=cache)
        if result.returncode != 0:
            raise BuildError(
                "apt-get download failed (the build needs the Debian package "
                f"repositories once; later builds use {cache}):\n{result.stderr.strip()}"
            )
    debs = {}
    for name, version in packages.items():
        deb = find(name, version)
        if deb is None:
            raise BuildError(f"apt-get download did not leave {name} {version} in {cache}")
        debs[name] = deb
    return debs


def extract(deb: Path, into: Path) -> None:
    result = run(["dpkg-deb", "-x", str(deb), str(into)])
    if result.returncode != 0:
        raise BuildError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")


# --- kernel modules ----------------------------------------------------------------


def module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def module_depends(path: Path) -> list[str]:
    """``depends=`` and ``softdep=pre:`` of a module, from its .modinfo strings."""
    data = read_module(path)
    names: list[str] = []
    for match in re.finditer(rb"(?:^|\0)depends=([^\0]*)", data):
        names += [n for n in match.group(1).decode().split(",") if n]
    for match in re.finditer(rb"(?:^|\0)softdep=pre: ?([^\0]*?)(?: post:[^\0]*)?\0", data):
        names += match.group(1).decode().split()
    return [n.replace("-", "_") for n in names]


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> tuple[list[Path], list[str]]:
    """The module files for ``wanted`` and what they depend on, dependencies first;
    and the wanted names this kernel has neither as a module nor built in."""
    index = {module_name(p): p for p in moddir.rglob("*.ko*")}
    builtin_file = moddir / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {module_name(Path(line)) for line in builtin_file.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin or name not in index:
            return
        seen.add(name)
        for dep in module_depends(index[name]):
            visit(dep)
        order.append(index[name])

    unknown = []
    for name in wanted:
        name = name.replace("-", "_")
        if name not in index and name not in builtin:
            unknown.append(name)
        visit(name)
    return order, unknown


# --- the root filesystem -----------------------------------------------------------


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def install_kernel(kernel_tree: Path, root: Path, modules: Iterable[str]) -> tuple[str, Path]:
    """Copy the wanted modules into ``root``; return the kernel release and its vmlinuz."""
    vmlinuz = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise BuildError("the kernel package has no /boot/vmlinuz-*")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    config = (kernel_tree / "boot" / f"config-{release}").read_text()
    if "CONFIG_RD_ZSTD=y" not in config:
        raise BuildError(f"kernel {release} cannot unpack a zstd initramfs (CONFIG_RD_ZSTD)")
    moddir = kernel_tree / "lib" / "modules" / release
    load = []
    order, unknown = resolve_modules(moddir, modules)
    unknown = [name for name in unknown if name not in MODULES_DEFAULT]
    if unknown:
        raise BuildError(f"kernel {release} has no module {', '.join(unknown)}")
    for module in order:
        relative = Path("lib/modules", release, module.relative_to(moddir))
        target = root / relative.with_name(module_name(module) + ".ko")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_module(module))
        load.append("/" + target.relative_to(root).as_posix())
    write(root / "etc/baas/modules", "".join(f"{path}\n" for path in load))
    return release, vmlinuz[0]


def write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)


def prune(root: Path) -> None:
    for relative in PRUNE:
        remove(root / relative)
    stdlib = root / "usr/lib" / PYTHON
    for relative in PRUNE_PYTHON:
        remove(stdlib / relative)
    for module in (stdlib / "lib-dynload").iterdir():
        if PRUNE_DYNLOAD.match(module.name):
            module.unlink()


def install_busybox(root: Path) -> None:
    """Symlinks for busybox's applets (where no package file is already in place)."""
    busybox = root / "bin/busybox"
    result = run([str(busybox), "--list-full"])
    if result.returncode != 0:
        raise BuildError(f"cannot list busybox applets: {result.stderr.strip()}")
    for applet in result.stdout.split():
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(busybox, link.parent))


def install_certificates(root: Path) -> None:
    """The bundle update-ca-certificates would have made (dpkg -x runs no scripts)."""
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    bundle = b"".join(cert.read_bytes().rstrip(b"\n") + b"\n" for cert in certs)
    write(root / "etc/ssl/certs/ca-certificates.crt", bundle)
    cert_pem = root / "usr/lib/ssl/cert.pem"
    cert_pem.parent.mkdir(parents=True, exist_ok=True)
    remove(cert_pem)
    cert_pem.symlink_to("/etc/ssl/certs/ca-certificates.crt")


def agent_entry_point(agent_dir: Path) -> str:
    project = tomllib.loads((agent_dir / "pyproject.toml").read_text())
    entry: str = (
        project.get("project", {}).get("scripts", {}).get("baas-agent", "baas_agent.cli:main")
    )
    return entry


def install_agent(agent_dir: Path, root: Path) -> tuple[str, str]:
    """Copy the agent's sources (its packages, as its wheel holds them) and write
    /usr/bin/baas-agent; return (version, entry)."""
    for package in AGENT_PACKAGES:
        source = agent_dir / package
        if not (source / "__init__.py").exists():
            raise BuildError(f"no agent package at {source}")
        target = root / "usr/lib/python3/dist-packages" / package
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file() or path.suffix == ".pyc":
                continue
            write(target / path.relative_to(source), path.read_bytes())
    source = agent_dir / "baas_agent"
    entry = agent_entry_point(agent_dir)
    module, _, func = entry.partition(":")
    write(
        root / "usr/bin/baas-agent",
        "#!/bin/sh\n"
        f"exec /usr/bin/{PYTHON} -c 'import sys; from {module} import {func}; "
        f'sys.argv[0] = "baas-agent"; sys.exit({func}())\' "$@"\n',
        0o755,
    )
    version = re.search(
        r'^__version__ = "([^"]+)"', (source / "__init__.py").read_text(), re.MULTILINE
    )
    return (version.group(1) if version else "unknown"), entry


def install_base(root: Path, release_line: str) -> None:
    write(root / "init", (HERE / "init.sh").read_bytes(), 0o755)
    write(root / "etc/baas/udhcpc.sh", (HERE / "udhcpc.sh").read_bytes(), 0o755)
    write(root / "etc/baas-mgmt-release", release_line + "\n")
    write(root / "etc/hostname", "baas-mgmt\n")
    write(root / "etc/hosts", "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 baas-mgmt\n")
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    write(root / "etc/group", "root:x:0:\n")
    write(root / "etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    write(root / "etc/resolv.conf", "")
    remove(root / f"usr/bin/{PYTHON.removesuffix('.11')}")
    (root / "usr/bin/python3").symlink_to(PYTHON)
    for directory in ("proc", "sys", "dev", "run", "tmp", "root", "mnt"):
        (root / directory).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)


# --- checking the image on the build host ----------------------------------------

CHECK_SCRIPT = r"""
import importlib, importlib.util, json, os, py_compile, sys
root, entry, accelerators, *names = sys.argv[1:]
missing = []
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name}: {error}")
dynload = os.path.join(sys.prefix, "lib", "python3.11", "lib-dynload")
for so in sorted(os.listdir(dynload)):
    name = so.split(".")[0]
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name}: {error}")
module, _, func = entry.partition(":")
try:
    getattr(importlib.import_module(module), func)
except (ImportError, AttributeError) as error:
    missing.append(f"agent entry point {entry}: {error!r}")
# The agent imports some of its modules only when it needs them: all are imported (and so
# byte-compiled below) here, so that none is compiled on the machine.
for package in ("baas_agent", "diskimage"):
    for name in sorted(os.listdir(os.path.join(root, "usr/lib/python3/dist-packages", package))):
        if name.endswith(".py") and name != "__main__.py":
            try:
                importlib.import_module(f"{package}.{name[:-3]}")
            except ImportError as error:
                missing.append(f"{package}.{name[:-3]}: {error}")
import hashlib, ssl
hashlib.sha256(b"").hexdigest()
ssl.create_default_context()
if missing:
    sys.exit("\n".join(missing))
print(json.dumps({n: sys.modules[n].__version__ for n in accelerators.split(",")}))
for mod in list(sys.modules.values()):
    path = getattr(mod, "__file__", None) or ""
    if path.startswith(root) and path.endswith(".py"):
        py_compile.compile(
            path, cfile=importlib.util.cache_from_source(path), dfile=path[len(root):],
            doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
"""


def check_and_compile(root: Path, entry: str, work: Path) -> dict[str, str]:
    """Run the image's own Python on this host (through the image's dynamic loader).

    Imports the agent, the standard library modules it needs and every extension
    module left in the image, fails if any shared library came from the host,
    and byte-compiles what was imported (deterministic, hash-based .pyc files)
    so that the agent starts fast under emulation. Returns the version of each of
    the agent's accelerators, as the image's Python imports them.
    """
    if platform.machine() != "x86_64" or sys.platform != "linux":
        log("not an x86_64 Linux host: skipping the check of the image's Python")
        return {}
    libdirs = [root / "lib/x86_64-linux-gnu", root / "usr/lib/x86_64-linux-gnu"]
    debug = work / "ld-debug"
    command = [
        str(root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        "--library-path",
        ":".join(str(d) for d in libdirs),
        str(root / "usr/bin" / PYTHON),
        "-s",
        "-c",
        CHECK_SCRIPT,
        str(root),
        entry,
        ",".join(AGENT_ACCELERATORS),
        *PYTHON_CHECK_IMPORTS,
    ]
    env = {
        "PYTHONHOME": str(root / "usr"),
        "PYTHONPATH": str(root / "usr/lib/python3/dist-packages"),
        "SSL_CERT_FILE": str(root / "etc/ssl/certs/ca-certificates.crt"),
        "LD_DEBUG": "libs",
        "LD_DEBUG_OUTPUT": str(debug),
        "LANG": "C.UTF-8",
    }
    # Not from the repository: its diskimage/ would shadow the image's, which would then be
    # neither checked nor byte-compiled.
    result = run(command, env=env, cwd=work)
    if result.returncode != 0:
        raise BuildError(
            "the image's Python cannot run the agent:\n"
            + (result.stderr.strip() or result.stdout.strip())
        )
    leaked = set()
    for trace in work.glob("ld-debug.*"):
        for loaded in re.findall(r"calling init: (\S+)", trace.read_text()):
            if not os.path.realpath(loaded).startswith(str(root.resolve()) + os.sep):
                leaked.add(loaded)
        trace.unlink()
    if leaked:
        raise BuildError(
            "the image lacks shared libraries (loaded from the build host instead): "
            + ", ".join(sorted(leaked))
            + ". Add their Debian packages to PACKAGES in mgmt_os/build.py."
        )
    versions: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return versions


# --- the initramfs -----------------------------------------------------------------


def cpio_entries(root: Path) -> Iterator[tuple[str, Path | None, int, int, bytes]]:
    """(name, path, mode, rdev, data) for every file, sorted; /dev/console first."""
    yield "dev", None, stat.S_IFDIR | 0o755, 0, b""
    yield "dev/console", None, stat.S_IFCHR | 0o600, os.makedev(5, 1), b""
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        name = path.relative_to(root).as_posix()
        if name == "dev":
            continue
        info = path.lstat()
        mode = stat.S_IFMT(info.st_mode) | stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            yield name, path, mode, 0, os.readlink(path).encode()
        elif stat.S_ISREG(info.st_mode):
            yield name, path, mode, 0, path.read_bytes()
        elif stat.S_ISDIR(info.st_mode):
            yield name, path, mode, 0, b""
        else:
            raise BuildError(f"unexpected file type in the image: {name}")


def cpio_header(ino: int, mode: int, mtime: int, size: int, rdev: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, 1, mtime, size, 0, 0, os.major(rdev), os.minor(rdev), len(name), 0)
    return b"070701" + b"".join(b"%08X" % field for field in fields) + name


def pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


def write_cpio(root: Path, out: _Writer, mtime: int) -> None:
    """A newc archive of ``root``: owned by root, one timestamp, stable inode numbers."""
    ino = 0
    for ino, (name, _path, mode, rdev, data) in enumerate(cpio_entries(root), start=1):
        header = cpio_header(ino, mode, mtime, len(data), rdev, name.encode() + b"\0")
        out.write(header + pad4(len(header)) + data + pad4(len(data)))
    trailer = cpio_header(ino + 1, 0, 0, 0, 0, b"TRAILER!!!\0")
    out.write(trailer + pad4(len(trailer)))


def write_initrd(root: Path, target: Path, mtime: int) -> None:
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
    with target.open("wb") as raw, compressor.stream_writer(raw, closefd=False) as out:
        write_cpio(root, out, mtime)


# --- the build ---------------------------------------------------------------------


def gather_inputs(kernel: str, modules: tuple[str, ...], agent_dir: Path) -> Inputs:
    if run(["dpkg", "--print-architecture"]).stdout.strip() != "amd64":
        raise BuildError("the management OS is built on an amd64 Debian host")
    for needed in (*(f"{package}/__init__.py" for package in AGENT_PACKAGES), "pyproject.toml"):
        if not (agent_dir / needed).is_file():
            raise BuildError(f"no agent at {agent_dir} (missing {needed})")
    kernel_package, packages = resolve_packages(kernel)
    init_digest = hashlib.sha256(
        (HERE / "init.sh").read_bytes() + b"\0" + (HERE / "udhcpc.sh").read_bytes()
    ).hexdigest()
    return Inputs(
        kernel_package=kernel_package,
        packages=dict(sorted(packages.items())),
        modules=modules,
        init_sha256=init_digest,
        agent_sha256=hashlib.sha256(
            b"".join(tree_sha256(agent_dir / package).encode() for package in AGENT_PACKAGES)
            + sha256_file(agent_dir / "pyproject.toml").encode()
        ).hexdigest(),
        wheels=wheels_digest(),
        build_sha256=sha256_file(Path(__file__)),
    )


def wheels_digest() -> dict[str, str]:
    try:
        return wheels.digest(AGENT_WHEELS)
    except wheels.WheelError as exc:
        raise BuildError(str(exc)) from exc


def up_to_date(out: Path, key: str) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("cache_key") != key:
        return None
    for name, info in manifest.get("files", {}).items():
        path = out / name
        if not path.exists() or sha256_file(path) != info.get("sha256"):
            return None
    return manifest


def assemble(inputs: Inputs, debs: dict[str, Path], agent_dir: Path, work: Path) -> dict:
    kernel_tree, root = work / "kernel", work / "root"
    extract(debs[inputs.kernel_package], kernel_tree)
    for name in PACKAGES:
        extract(debs[name], root)
    install_certificates(root)
    prune(root)
    release, vmlinuz = install_kernel(kernel_tree, root, inputs.modules)
    install_busybox(root)
    agent_version, entry = install_agent(agent_dir, root)
    wheels.install(AGENT_WHEELS, root / "usr/lib/python3/dist-packages")
    install_base(root, f"BAAS management OS (agent {agent_version}, {inputs.key()[:12]})")
    accelerators = check_and_compile(root, entry, work)
    modules = (root / "etc/baas/modules").read_text().split()
    return {
        "release": release,
        "vmlinuz": vmlinuz,
        "root": root,
        "agent": {"version": agent_version, "entry_point": entry, "accelerators": accelerators},
        "modules": [Path(m).name.removesuffix(".ko") for m in modules],
    }


def build(
    out: Path,
    cache: Path,
    kernel: str = KERNEL_DEFAULT,
    modules: tuple[str, ...] = MODULES_DEFAULT,
    agent_dir: Path = REPO / "agent",
    force: bool = False,
) -> dict:
    """Build (or find up to date) the management OS in ``out``; return its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o022)  # modes of the directories made here go into the image
    try:
        return _build(out, cache, kernel, modules, agent_dir, force)
    finally:
        os.umask(umask)


def _build(
    out: Path, cache: Path, kernel: str, modules: tuple[str, ...], agent_dir: Path, force: bool
) -> dict:
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        inputs = gather_inputs(kernel, modules, agent_dir)
        key = inputs.key()
        manifest = None if force else up_to_date(out, key)
        if manifest is not None:
            log(f"up to date in {out} (kernel {manifest['kernel']['release']})")
            return manifest
        debs = download(inputs.packages, cache / "debs")
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
        with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
            work = Path(tmp)
            log(f"assembling the image in {work}")
            parts = assemble(inputs, debs, agent_dir, work)
            log(f"packing and compressing the initramfs (zstd -{ZSTD_LEVEL})")
            write_initrd(parts["root"], work / "initrd.img", mtime)
            shutil.copyfile(parts["vmlinuz"], work / "vmlinuz")
            files = {}
            for name in ("vmlinuz", "initrd.img"):
                files[name] = {
                    "sha256": sha256_file(work / name),
                    "size": (work / name).stat().st_size,
                }
            manifest = {
                "format": FORMAT,
                "cache_key": key,
                "kernel": {
                    "package": inputs.kernel_package,
                    "version": inputs.packages[inputs.kernel_package],
                    "release": parts["release"],
                },
                "packages": inputs.packages,
                "modules": parts["modules"],
                "agent": {**parts["agent"], "sources_sha256": inputs.agent_sha256},
                "init_sha256": inputs.init_sha256,
                "files": files,
            }
            for name in files:
                os.replace(work / name, out / name)
        (out / "manifest.tmp").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(out / "manifest.tmp", out / "manifest.json")
        log(f"built in {out}: kernel {parts['release']}, initrd {files['initrd.img']['size']} B")
        return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mgmt_os.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=REPO / "var/mgmt-os", help="output directory")
    parser.add_argument(
        "--cache", type=Path, default=REPO / "var/cache/mgmt-os", help="downloaded packages"
    )
    parser.add_argument("--kernel", default=KERNEL_DEFAULT, help="kernel package (or meta package)")
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="also load this kernel module (repeatable), "
        "e.g. nvme or e1000e with --kernel linux-image-amd64",
    )
    parser.add_argument(
        "--agent", type=Path, default=REPO / "agent", help="the agent's project dir"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        manifest = build(
            out=args.out,
            cache=args.cache,
            kernel=args.kernel,
            modules=(*MODULES_DEFAULT, *args.module),
            agent_dir=args.agent,
            force=args.force,
        )
    except BuildError as error:
        log(f"error: {error}")
        return 1
    for name in manifest["files"]:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
