"""The agent in the image: its packages copied from the repository, and its command.

:func:`install_agent` copies ``baas_agent`` and ``diskimage`` whole (every file
but byte-code caches, so a new module is shipped without a change here) into the
image's ``dist-packages`` and writes ``/usr/bin/baas-agent`` for the entry point
the agent's ``pyproject.toml`` declares. The packages Debian 12 lacks are
:mod:`mgmt_os.wheels`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from mgmt_os.debs import PYTHON
from mgmt_os.files import write
from mgmt_os.host import BuildError

# The agent's packages: its own, and the disk image formats it shares with the server
# (``agent/diskimage`` links to the repository's ``diskimage``).
AGENT_PACKAGES = ("baas_agent", "diskimage")
# Its Python packages Debian 12 does not ship, copied from the build's own environment.
AGENT_WHEELS = ("blake3",)
# What the agent runs faster with (landing.py and verify.py fall back without them): the
# build fails if the image's Python cannot import them, and the manifest names their versions.
AGENT_ACCELERATORS = ("zstandard", "blake3")


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
