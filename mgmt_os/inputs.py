"""The cache key: everything an image is made of, and whether the last build is up to date.

:func:`gather_inputs` names the inputs (package versions, the kernel modules,
``init.sh`` and ``udhcpc.sh``, the agent's sources, the copied wheels and the
build's own modules) and checks that the host and the agent can make an image;
:meth:`Inputs.key` digests them. :func:`up_to_date` returns the manifest of the
last build when it has the same key and its files are intact, else None.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgmt_os import wheels
from mgmt_os.agent import AGENT_PACKAGES, AGENT_WHEELS
from mgmt_os.debs import resolve_packages
from mgmt_os.files import sha256_file
from mgmt_os.host import BuildError, run

HERE = Path(__file__).resolve().parent
FORMAT = 1  # bump when the layout of the image changes in a way the inputs do not show


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


def tree_sha256(root: Path) -> str:
    """A digest of the files under ``root`` (paths and contents), caches excluded."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.suffix == ".pyc":
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def sources_sha256() -> str:
    """A digest of the build's own modules (the Python files of ``mgmt_os``)."""
    digest = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


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
        build_sha256=sources_sha256(),
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
