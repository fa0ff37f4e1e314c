"""The check of the image on the build host, by the image's own Python.

:func:`check_and_compile` runs the image's Python through the image's dynamic
loader; it fails the build (:class:`BuildError`) if the agent, a standard library
module it needs or an extension module left in the image cannot be imported, or
if a shared library had to come from the host. What was imported is
byte-compiled into the image (deterministic, hash-based ``.pyc`` files). On a
host that is not x86_64 Linux it checks nothing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

from mgmt_os.agent import AGENT_ACCELERATORS
from mgmt_os.debs import PYTHON
from mgmt_os.host import BuildError, log, run

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
            + ". Add their Debian packages to PACKAGES in mgmt_os/debs.py."
        )
    versions: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return versions
