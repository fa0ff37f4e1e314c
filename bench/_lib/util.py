"""Small helpers of the benchmark scripts: the checkout's paths, sizes, logging, timing,
processes, the page cache and the load average."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
MiB = 1 << 20
USERNAME = "bench"


def parse_size(text: str) -> int:
    """``6G``, ``600M``, ``512K`` or plain bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def byte_compile(*packages: Path) -> None:
    """Byte-compile ``packages`` (untimed), as an installer does: with
    ``PYTHONDONTWRITEBYTECODE`` set (as in some shells), a program run from sources would
    otherwise compile them again at every start, which no installed copy does."""
    run([str(PYTHON), "-m", "compileall", "-q", *map(str, packages)])


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def sync_all() -> None:
    """Flush everything dirty before a timing, so no timing pays for an earlier write."""
    os.sync()


def read_through(path: Path) -> None:
    """Read a file once (holes included) so both servers start from a warm page cache."""
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median(values: list[float]) -> float:
    return statistics.median(values)
