"""Log lines to the server: ``POST /api/log`` with ``{"lines": [...]}``, in batches.

Contract: a :class:`LogShipper` is a logging handler that keeps formatted
lines and sends them when ``batch`` lines are waiting, when the oldest has
waited ``max_wait`` seconds (checked as lines arrive), and on ``flush()`` /
``close()``. Sending is best effort: a failure keeps the lines (at most
``keep`` of them, oldest dropped first) for the next attempt and never raises
into the code that logged. Lines logged while sending are not sent again
recursively. :meth:`take` hands the lines not sent yet to the caller (the agent
sends its last lines with its result).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from baas_agent.client import ApiError, Client

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class LogShipper(logging.Handler):
    """Batches log records to ``POST /api/log`` once the client holds a token."""

    def __init__(
        self,
        client: Client,
        *,
        batch: int = 50,
        max_wait: float = 2.0,
        keep: int = 2000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.client = client
        self.batch = batch
        self.max_wait = max_wait
        self.clock = clock
        self.lines: deque[str] = deque(maxlen=keep)
        self._oldest: float | None = None
        self._sending = threading.local()
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False):
            return  # complaints from sending these very lines stay local
        try:
            line = self.format(record)
        except Exception:  # logging must never raise
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self.lines.append(line)
            if self._oldest is None:
                self._oldest = self.clock()
            due = len(self.lines) >= self.batch or self.clock() - self._oldest >= self.max_wait
        if due:
            self.flush()

    def flush(self) -> None:
        """Send what is waiting; on failure keep it for later."""
        if not self.client.token or getattr(self._sending, "active", False):
            return
        with self.lock:  # type: ignore[union-attr]
            lines = list(self.lines)
            self.lines.clear()
            self._oldest = None
        if not lines:
            return
        self._sending.active = True
        try:
            self.client.call("POST", "/api/log", {"lines": lines}, retries=1)
        except ApiError:
            with self.lock:  # type: ignore[union-attr]
                self.lines = deque([*lines, *self.lines], maxlen=self.lines.maxlen)
                self._oldest = self.clock()
        finally:
            self._sending.active = False

    def take(self) -> list[str]:
        """The lines not sent yet, which are then the caller's to send (with the result)."""
        with self.lock:  # type: ignore[union-attr]
            lines = list(self.lines)
            self.lines.clear()
            self._oldest = None
        return lines

    def close(self) -> None:
        self.flush()
        super().close()
