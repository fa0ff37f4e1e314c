"""Progress of an image's step, posted to the server.

Contracts:

- :class:`Reporter` posts ``/api/agent/progress`` at most once a second per
  image (and disk: a sync's reports name the disk it brings back), best effort:
  a failed routine report is logged and forgotten, never retried, so a slow
  server cannot stall a flash. Only :class:`DeploymentOver`
  (the deployment was cancelled) goes through, to stop the work at once.
- :meth:`Reporter.announce` (the start of an image's work) is retried: the server
  records an image as written or brought back only if it saw progress for it.
  :meth:`Reporter.announcing` sends it on a thread beside the work that follows;
  the caller joins the :class:`Beside` it returns before the work's end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from baas_agent.client import ApiError, Client, DeploymentOver

log = logging.getLogger(__name__)


class Reporter:
    """Posts ``/api/agent/progress``, at most once per ``interval`` per image.

    Progress is best effort: a failed post is logged and forgotten, never
    retried, so a slow server cannot stall a flash.
    """

    def __init__(
        self,
        client: Client | None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str | None], float] = {}

    def __call__(
        self, image: str, phase: str, done: int, total: int, disk: str | None = None
    ) -> None:
        now = self.clock()
        last = self._last.get((image, disk))
        if last is not None and now - last < self.interval:
            return
        self._last[image, disk] = now
        if self.client is None:
            return
        body = _body(image, phase, done, total, disk)
        try:
            self.client.call("POST", "/api/agent/progress", body, retries=0)
        except DeploymentOver:
            raise  # cancelled: stop writing now
        except ApiError as exc:
            log.debug("progress not sent: %s", exc)

    def announce(self, image: str, phase: str, total: int, disk: str | None = None) -> None:
        """Tell the server an image's work begins, retried, unlike the routine reports.

        The server records an image as written or brought back only if it saw
        progress for it, and an empty image (a disk of zeros) may otherwise
        never produce any. ``disk``: the disk a sync brings back (the server
        records the report for that disk; a machine may hold one image on two).
        """
        self._last[image, disk] = self.clock()
        if self.client is None:
            return
        body = _body(image, phase, 0, total, disk)
        try:
            self.client.call("POST", "/api/agent/progress", body)
        except DeploymentOver:
            raise
        except ApiError as exc:
            log.warning("%s: the server did not take the start of %s: %s", image, phase, exc)

    def announcing(self, image: str, phase: str, total: int) -> Beside:
        """:meth:`announce` on a thread of its own, beside the work that follows (the
        data map's download, the disk's check): join the result before the work's end."""
        self._last[image, None] = self.clock()  # no routine report before it, from now on
        return Beside(lambda: self.announce(image, phase, total))

    def phase(
        self, image: str, phase: str, total: int, disk: str | None = None
    ) -> Callable[[int], None]:
        """A ``done -> None`` callback for one image and phase (and the disk of a sync)."""
        return lambda done: self(image, phase, done, total, disk)


def _body(image: str, phase: str, done: int, total: int, disk: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": image,
        "phase": phase,
        "bytes_done": done,
        "bytes_total": total,
    }
    if disk is not None:  # a sync's report: for that disk (an older server ignores it)
        body["disk"] = disk
    return body


class Beside:
    """A call run on a thread beside the caller's work; :meth:`join` waits for it and
    raises what it raised."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._succeeded = False
        self._call = call
        self._thread = threading.Thread(target=self._run, name="beside", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._call()
            self._succeeded = True
        except BaseException as exc:  # handed to the joining thread
            self._error = exc

    def wait(self) -> bool:
        """Wait for the call; whether it returned (what it raised is left for :meth:`join`)."""
        self._thread.join()
        return self._succeeded

    def join(self) -> None:
        """Wait for the call (again: at once) and raise what it raised (once)."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
