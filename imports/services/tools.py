"""Running an external tool (skopeo, umoci, mke2fs…) under watch.

A tool runs in a session of its own; every half second a ``watch`` callback
says whether it must stop (a cancel, a size limit passed, the deadline), and
then the whole process group is terminated, and killed if it lingers. Its
output is kept to a bounded tail, for the job's log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TAIL = 16 * 1024  # bytes of a tool's output kept for the log and the reason
POLL = 0.5


class ToolFailed(Exception):
    """The tool exited with an error; ``output`` is the tail of what it printed."""

    def __init__(self, name: str, code: int, output: str):
        self.name, self.code, self.output = name, code, output
        super().__init__(f"{name} failed (exit {code}): {output.strip()[-1000:]}")


class ToolStopped(Exception):
    """The watch said stop; ``reason`` is its sentence."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


Watch = Callable[[], str | None]


def run_tool(
    args: Sequence[str | os.PathLike],
    *,
    watch: Watch,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    poll: float = POLL,
) -> str:
    """Run ``args``; return its standard output (bounded). Raises ToolFailed, ToolStopped.
    ``watch`` is asked every ``poll`` seconds."""
    proc = subprocess.Popen(  # noqa: S603 - fixed programs, arguments we built
        [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    tail = _Tail(proc)
    try:
        while proc.poll() is None:
            reason = watch()
            if reason is not None:
                _stop(proc)
                raise ToolStopped(reason)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=poll)
    except BaseException:
        _stop(proc)
        raise
    finally:
        tail.join()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
    if proc.returncode != 0:
        raise ToolFailed(Path(str(args[0])).name, proc.returncode, tail.text)
    return tail.text


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the tool's process group; kill it if it is still there 5 s later."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return
            time.sleep(0.05)


class _Tail:
    """Reads a process's output on a thread, keeping the last TAIL bytes."""

    def __init__(self, proc: subprocess.Popen):
        self._data = b""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            self._data = (self._data + chunk)[-TAIL:]

    def join(self) -> None:
        self._thread.join(timeout=10)

    @property
    def text(self) -> str:
        return self._data.decode(errors="replace")


def tree_size(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (allocated blocks), 0 if it is absent."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return total


class Remover:
    """Folders a job no longer needs, removed on threads of their own: unlinking every file
    of an unpacked tree waits on the disk's journal, and the next step need not wait for it.
    :meth:`wait` before the job's work folder itself is removed."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def later(self, path: Path) -> None:
        thread = threading.Thread(
            target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        for thread in self._threads:
            thread.join()
        self._threads.clear()
