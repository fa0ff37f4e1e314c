"""The Debian packages the image is made of: which versions, fetched and unpacked.

Everything comes from ``apt-get download`` with the host's apt sources and local
package lists (no root needed). :func:`resolve_packages` names the version of
every package apt would fetch (a kernel meta package resolved to its versioned
package); :func:`download` fetches what the cache lacks; :func:`extract` unpacks
a package without running its scripts. Each raises :class:`BuildError` with what
to do (``apt-get update``, the package repositories once).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from mgmt_os.host import BuildError, log, run

PYTHON = "python3.11"


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
