"""The files and the server process of one network mount (qemu-img, qemu-nbd).

A mount's directory holds

* a read-only copy of the pinned version, the *base*, put there by the
  catalogue (``catalogue.interface.version_copy_raw``: a hard link to the
  stored file when it can, else decompressed sparse, its SHA-256 checked
  against the version);
* the *overlay*, a qcow2 file over the base that takes every write of the
  machine, so the base and the catalogue's version never change;
* the server's pid file; and, at the end, the merged image to upload.

The server is ``qemu-nbd --fork``: a daemon in a session of its own, so it
outlives the worker that started it; its pid is kept in the pid file and in
the mount's row, and checked against ``/proc/<pid>/cmdline`` before it is
signalled, so a recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from catalogue.interface import CopyFailed, version_copy_raw
from catalogue.models import Version

QEMU_IMG = "qemu-img"
QEMU_NBD = "qemu-nbd"
OVERLAY = "overlay.qcow2"
PID_FILE = "qemu-nbd.pid"
TLS_DIR = "tls"
# The PSK identity clients give; the key itself is each mount's own.
TLS_PSK_IDENTITY = "baas"
MERGED = "merged.img"
STOP_TIMEOUT = 30.0
# Converting a large image takes a while; nothing else we run comes near this.
LONG_TIMEOUT = 3 * 3600


class NbdError(Exception):
    """A step of a network mount failed; the message says which and why."""


class PortInUse(NbdError):
    """Another process listens on the port: try the next one."""


class MountBusy(NbdError):
    """Another step of the same mount holds its lock: that step does the work."""


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(  # noqa: S603 - fixed programs on our own files
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NbdError(f"{args[0]} could not run: {exc}") from exc
    return result


def _failure(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


@contextlib.contextmanager
def mount_lock(directory: Path) -> Iterator[None]:
    """Serialise the steps of one mount (start, restart, end) on this host.

    Raises MountBusy at once when another step holds it, rather than keeping
    a worker waiting. The lock file sits beside the mount's directory, so the
    directory can be removed while the lock is held.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_suffix(".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise MountBusy(f"Another step of the mount in {directory} is running.") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Files -------------------------------------------------------------------------


def materialise_base(*, directory: Path, version: Version) -> Path:
    """The pinned version's bytes as a file of the mount, read-only; reused if present.

    The catalogue copies it out (``version_copy_raw``): a hard link to the
    stored file when it can, else decoded and checked, never held in memory.
    """
    try:
        return version_copy_raw(version=version, directory=directory)
    except CopyFailed as exc:
        raise NbdError(str(exc)) from exc


def create_overlay(*, directory: Path, base: Path, base_format: str) -> Path:
    """The qcow2 overlay over ``base``. Never recreated once it exists: it holds the changes."""
    overlay = directory / OVERLAY
    if overlay.exists():
        return overlay
    part = directory / f"{OVERLAY}.part"
    part.unlink(missing_ok=True)
    result = _run(
        *(QEMU_IMG, "create", "-q", "-f", "qcow2"),
        *("-b", str(base), "-F", base_format, str(part)),
    )
    if result.returncode != 0:
        raise NbdError(f"qemu-img could not create the overlay: {_failure(result)}")
    part.chmod(0o600)
    os.rename(part, overlay)
    return overlay


def overlay_changed(overlay: Path) -> bool:
    """Whether the machine wrote anything: any extent of the overlay itself (depth 0)."""
    result = _run(QEMU_IMG, "map", "--output=json", "-f", "qcow2", str(overlay))
    if result.returncode != 0:
        raise NbdError(f"qemu-img cannot read the overlay: {_failure(result)}")
    return any(extent.get("depth") == 0 for extent in json.loads(result.stdout))


def merge(*, directory: Path, overlay: Path, file_standard: str) -> Path:
    """Base and overlay flattened into one sparse file in the image's format; reused if present."""
    merged = directory / MERGED
    if merged.exists():
        return merged
    part = directory / f"{MERGED}.part"
    part.unlink(missing_ok=True)
    result = _run(
        *(QEMU_IMG, "convert", "-q", "-f", "qcow2", "-O", file_standard),
        *(str(overlay), str(part)),
        timeout=LONG_TIMEOUT,
    )
    if result.returncode != 0:
        raise NbdError(f"qemu-img could not merge the overlay: {_failure(result)}")
    with open(part, "rb") as handle:
        os.fsync(handle.fileno())
    os.rename(part, merged)
    return merged


# --- The server --------------------------------------------------------------------


def server_start(
    *, directory: Path, overlay: Path, bind: str, port: int, export_name: str, tls_psk: str = ""
) -> int:
    """Start ``qemu-nbd`` exporting the overlay; returns its pid once it listens.

    With ``tls_psk`` (hex), clients must negotiate TLS with that pre-shared
    key (identity ``TLS_PSK_IDENTITY``) before anything else, listing exports
    included. Raises PortInUse when the port is taken, NbdError for anything
    else. ``--persistent`` keeps it serving when the machine disconnects (a reboot).
    """
    pid_file = directory / PID_FILE
    pid_file.unlink(missing_ok=True)
    result = _run(
        *(QEMU_NBD, "--fork", f"--pid-file={pid_file}", "--persistent", "--shared=2"),
        *(f"--bind={bind}", f"--port={port}", f"--export-name={export_name}"),
        *_tls_args(directory, tls_psk),
        *("--format=qcow2", "--cache=writeback", "--discard=unmap", str(overlay)),
        timeout=60,
    )
    if result.returncode != 0:
        message = _failure(result)
        if "in use" in message.lower():
            raise PortInUse(message)
        raise NbdError(f"qemu-nbd could not start on {bind}:{port}: {message}")
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise NbdError(f"qemu-nbd started but left no pid file: {exc}") from exc


def _tls_args(directory: Path, tls_psk: str) -> list[str]:
    """qemu-nbd's options requiring TLS with ``tls_psk``, its key file written 0600."""
    if not tls_psk:
        return []
    keys = directory / TLS_DIR
    keys.mkdir(mode=0o700, exist_ok=True)
    key_file = keys / "keys.psk"
    key_file.touch(mode=0o600)
    key_file.write_text(f"{TLS_PSK_IDENTITY}:{tls_psk}\n")
    where = str(keys).replace(",", ",,")  # qemu's option syntax: a comma is doubled
    return [f"--object=tls-creds-psk,id=tls0,endpoint=server,dir={where}", "--tls-creds=tls0"]


def recorded_pid(directory: Path) -> int | None:
    """The pid qemu-nbd wrote when it started, if any (a crash may have lost it elsewhere)."""
    try:
        return int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def server_alive(*, pid: int | None, overlay: Path) -> bool:
    """Whether ``pid`` is a qemu-nbd serving ``overlay`` (not a recycled pid, not a zombie)."""
    if not pid:
        return False
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(words) and words[0].endswith(QEMU_NBD.encode()) and str(overlay).encode() in words


def server_stop(*, pid: int | None, overlay: Path, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the server (SIGTERM: it flushes the overlay; SIGKILL if it hangs)."""
    if not pid:
        return  # none recorded: nothing runs
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not server_alive(pid=pid, overlay=overlay):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while server_alive(pid=pid, overlay=overlay) and time.monotonic() < deadline:
            time.sleep(0.05)
    if server_alive(pid=pid, overlay=overlay):
        raise NbdError(f"qemu-nbd (pid {pid}) does not stop.")


def remove_files(directory: Path) -> None:
    """Remove a mount's directory (base, overlay, merged image, pid file)."""
    shutil.rmtree(directory, ignore_errors=not directory.exists())
