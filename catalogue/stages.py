"""Threads for the stages of one stream, owned in one place.

An upload runs its stages on threads of their own so that decoding, hashing,
mapping and writing overlap on several cores (hashlib, file writes and socket
reads release the GIL). What can go wrong with threads is handled here, once:

* **hand-off**: each stage takes its items from a bounded queue, so memory
  stays bounded and a slow stage slows down whoever feeds it;
* **errors**: the first exception raised by any stage of a :class:`Stages`
  group fails the whole group; every later ``put`` or ``join`` raises it
  again, in the thread that feeds or ends the stream, and no stage does any
  more work (items still queued are dropped, never half-done);
* **cancellation**: :meth:`Stages.cancel` (a client gone, a check that
  failed on the feeding thread) stops every stage without raising;
* **join**: a stage's thread ends only after the items put before the end.

Only the standard library: the stages themselves know nothing of Django.
"""

from __future__ import annotations

import enum
import hashlib
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


class _End(enum.Enum):
    """What ends a stage's queue (an enum member, so types tell it from the items)."""

    END = enum.auto()


_END = _End.END


class Stages:
    """A group of stages whose threads start, fail, stop and end together.

    Start a stage before the stages that feed it (it is handed to them):
    :meth:`join` and :meth:`cancel` end the stages in the reverse order, so a
    stage that feeds another has ended before the one it feeds is told to.
    Used as a context manager, leaving the block by an exception cancels the
    group.
    """

    def __init__(self) -> None:
        self._stages: list[Stage[Any]] = []
        self._error: BaseException | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    def start(self, work: Callable[[_T], None], *, name: str, depth: int = 8) -> Stage[_T]:
        """A new stage running ``work(item)`` for each item put, in order, on its own thread."""
        stage = Stage(self, work, name=name, depth=depth)
        self._stages.append(stage)
        return stage

    @property
    def running(self) -> bool:
        """Whether the stages still work: nothing failed and nothing cancelled them."""
        return self._error is None and not self._cancelled

    def check(self) -> None:
        """Raise what a stage raised, if one did (again on every call)."""
        if self._error is not None:
            raise self._error

    def join(self) -> None:
        """End every stage after its queued items; raise the first error of any of them."""
        for stage in reversed(self._stages):
            stage.end()
        self.check()

    def cancel(self) -> None:
        """Stop every stage, dropping what is queued; never raises. Safe to call twice."""
        self._cancelled = True
        for stage in reversed(self._stages):
            stage.end()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def __enter__(self) -> Stages:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.join()
        else:
            self.cancel()


class Stage(Generic[_T]):
    """One stage of a :class:`Stages` group: a thread and the bounded queue that feeds it.

    Items must not change once put (immutable ``bytes``, or views of them):
    the stage reads them later, on its own thread.
    """

    def __init__(self, group: Stages, work: Callable[[_T], None], *, name: str, depth: int):
        self._group = group
        self._work = work
        self._queue: queue.Queue[_T | _End] = queue.Queue(maxsize=depth)
        self._ended = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: _T) -> None:
        """Hand ``item`` on (waits while the queue is full); raises the group's error."""
        self._group.check()
        if self._ended:
            raise RuntimeError(f"The stage {self._thread.name!r} has ended.")
        self._queue.put(item)

    def join(self) -> None:
        """End this stage after its queued items; raise the group's error, if any."""
        self.end()
        self._group.check()

    def end(self) -> None:
        """End this stage's thread, never raising (the rest of the group goes on)."""
        if not self._ended:
            self._ended = True
            self._queue.put(_END)  # the thread drains its queue whatever happens: never stuck
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if not self._group.running:
                continue  # failed or cancelled: drop the rest, but keep draining
            try:
                self._work(item)
            except BaseException as exc:  # handed to the thread that feeds or ends the stream
                self._group._fail(exc)


class BackgroundWorker(Generic[_T]):
    """A group of one stage: ``work(item)`` for each item put, in order, on its own thread.

    An exception raised by ``work`` is raised again by the next :meth:`put`
    or by :meth:`join`; the items after it are dropped.
    """

    def __init__(self, work: Callable[[_T], None], *, name: str, depth: int = 8):
        self._stages = Stages()
        self._stage = self._stages.start(work, name=name, depth=depth)

    def put(self, item: _T) -> None:
        self._stage.put(item)

    def join(self) -> None:
        """Wait until every item was worked on; raise what ``work`` raised, if anything."""
        self._stages.join()

    def close(self) -> None:
        """Stop the thread, whatever happened (an aborted upload)."""
        self._stages.cancel()


class BackgroundHasher:
    """SHA-256 computed on a thread of its own, so it overlaps reading and writing.

    With ``stages``, the thread is a stage of that group (it fails and stops
    with it); else it is a group of its own. At most ``depth`` chunks wait.
    ``update`` must receive immutable ``bytes``.
    """

    def __init__(self, depth: int = 8, *, stages: Stages | None = None):
        self._hash = hashlib.sha256()
        self._group = stages if stages is not None else Stages()
        self._stage = self._group.start(self._hash.update, name="sha256", depth=depth)
        self._digest: str | None = None

    def update(self, data: bytes) -> None:
        self._stage.put(data)

    def hexdigest(self) -> str:
        """Wait for every queued chunk, then return the digest. Ends the thread."""
        if self._digest is None:
            self._stage.join()
            self._digest = self._hash.hexdigest()
        return self._digest

    def close(self) -> None:
        """Stop the thread without caring for the result (too large to wait for, or aborted)."""
        self._stage.end()
