"""The agent's Python packages that Debian 12 does not ship, taken from the build's own Python.

``blake3`` has no Debian 12 package, and without it the agent verifies every
range it lands, and checks every disk it may keep, by SHA-256 alone — several
times slower on a machine without SHA extensions. The build copies the
distribution installed beside it (the one ``constraints.txt`` pins and the test
suite runs) into the image's ``dist-packages``, if it is a build for the
image's Python (CPython 3.11, x86_64 Linux): its files as its wheel installed
them, without byte-code caches, type stubs or metadata. The build's check of the
image then imports it with the image's own Python and fails if it needed a
shared library from the host (the Rust extension links glibc and libgcc_s, both
in the image's packages).

Nothing is downloaded here: ``./dev install`` (or ``pip install -c constraints.txt
blake3``) put the package where this build runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
from pathlib import Path

# The image runs Debian 12's python3.11 on x86_64: a wheel must carry one of these tags.
ABI_TAGS = ("cp311-cp311-", "cp311-abi3-", "cp37-abi3-", "cp38-abi3-")
PLATFORM = "x86_64"
SKIPPED_SUFFIXES = (".pyc", ".pyi")
SKIPPED_NAMES = ("py.typed",)


class WheelError(Exception):
    """A package the image needs is not installed here, or not built for the image."""


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise WheelError(
            f"the Python package {name} is not installed where the build runs; "
            "./dev install installs it (it is in constraints.txt)"
        ) from None


def _check_tags(name: str, dist: importlib.metadata.Distribution) -> None:
    tags = [
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    if not any(tag.startswith(ABI_TAGS) and tag.endswith(PLATFORM) for tag in tags):
        raise WheelError(
            f"the installed {name} is built for {', '.join(tags) or 'an unknown platform'}, "
            f"not for the image's CPython 3.11 on {PLATFORM}"
        )


def files(name: str) -> tuple[str, list[tuple[str, Path]]]:
    """(version, [(path inside dist-packages, installed file)]) of the installed ``name``."""
    dist = _distribution(name)
    _check_tags(name, dist)
    found = []
    for entry in dist.files or ():
        relative = entry.as_posix()
        parts = relative.split("/")
        if (
            parts[0].endswith((".dist-info", ".data"))
            or ".." in parts
            or "__pycache__" in parts
            or relative.endswith(SKIPPED_SUFFIXES)
            or parts[-1] in SKIPPED_NAMES
        ):
            continue
        found.append((relative, Path(str(dist.locate_file(entry)))))
    if not found:
        raise WheelError(f"the installed {name} has no files to copy")
    return dist.version, sorted(found)


def digest(names: tuple[str, ...]) -> dict[str, str]:
    """name -> "version sha256-of-its-files", for the build's cache key."""
    result = {}
    for name in names:
        version, listed = files(name)
        h = hashlib.sha256()
        for relative, path in listed:
            h.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
        result[name] = f"{version} {h.hexdigest()}"
    return result


def install(names: tuple[str, ...], dist_packages: Path) -> dict[str, str]:
    """Copy each package's files into ``dist_packages``; name -> version."""
    versions = {}
    for name in names:
        version, listed = files(name)
        for relative, path in listed:
            target = dist_packages / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            target.chmod(0o755 if relative.endswith(".so") else 0o644)
        versions[name] = version
    return versions
