"""What every step of the build shares: its error, its log, and the commands it runs.

:class:`BuildError` is the one failure of the build; its message says why and
what to do. :func:`run` runs a fixed command on the build host (no shell) and
never raises on its exit status: the caller checks it.
"""

from __future__ import annotations

import subprocess
import sys


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


def log(message: str) -> None:
    print(f"mgmt-os: {message}", file=sys.stderr, flush=True)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    # Fixed commands (apt-cache, apt-get, dpkg-deb, the image's own binaries), no shell.
    return subprocess.run(args, check=False, capture_output=True, text=True, **kwargs)  # noqa: S603
