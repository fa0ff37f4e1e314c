"""Hashing beside I/O for streaming uploads: work handed to a thread of its own.

The decoders of an upload's encoding and the checks of its first bytes are in
:mod:`diskimage.decoders`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable

# --- Hashing ----------------------------------------------------------------------


class BackgroundWorker:
    """Runs ``work(item)`` for each item put, in order, on a thread of its own.

    At most ``depth`` items wait, so memory stays bounded and a slow worker
    slows the producer down. An exception raised by ``work`` is raised again
    by the next :meth:`put` or by :meth:`join`; the items after it are
    dropped. Items must not change once put (immutable ``bytes``).
    """

    def __init__(self, work: Callable[[object], None], *, name: str, depth: int = 8):
        self._work = work
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as exc:  # handed to the producer
                    self._error = exc

    def put(self, item: object) -> None:
        self._raise()
        self._queue.put(item)

    def join(self) -> None:
        """Wait until every item was worked on; raise what ``work`` raised, if anything."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        self._raise()

    def close(self) -> None:
        """Stop the thread, whatever happened (an aborted upload)."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:  # and again on every later call: nothing more is done
            raise self._error


_END = object()


class BackgroundHasher:
    """SHA-256 computed on a thread of its own, so it overlaps reading and writing.

    hashlib releases the GIL for large updates, as do socket reads and file
    writes: the three proceed in parallel. At most ``depth`` chunks wait.
    ``update`` must receive immutable ``bytes``.
    """

    def __init__(self, depth: int = 8):
        self._hash = hashlib.sha256()
        self._worker = BackgroundWorker(self._hash.update, name="sha256", depth=depth)
        self._digest: str | None = None

    def update(self, data: bytes) -> None:
        self._worker.put(data)

    def hexdigest(self) -> str:
        """Wait for every queued chunk, then return the digest. Ends the thread."""
        if self._digest is None:
            self._worker.join()
            self._digest = self._hash.hexdigest()
        return self._digest

    def close(self) -> None:
        """Stop the thread without caring for the result (an aborted upload)."""
        self._worker.close()
