"""The image's root filesystem around the packages: pruned, busybox, certificates, /init.

What ``dpkg-deb -x`` cannot do (it runs no maintainer scripts) is done here:
busybox's applet links and the CA bundle. :func:`prune` removes what the image
does without; :func:`install_base` writes ``/init`` (``mgmt_os/init.sh``), the DHCP
hook and the few files of ``/etc`` a system needs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mgmt_os.debs import PYTHON
from mgmt_os.files import remove, write
from mgmt_os.host import BuildError, run

HERE = Path(__file__).resolve().parent


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
