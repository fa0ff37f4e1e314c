"""Downloads that start before their bytes may be used, held in memory up to a bound.

A delta re-flash (:mod:`baas_agent.delta`) may write nothing before it has
checked that the disk still holds what the delta keeps — a pass over all the
kept data, the longest step of a small delta — but its download needs only
the instruction. :class:`Prefetch` runs the downloads one after the other on a
thread of their own beside that check, and keeps what arrived until the caller
takes it: the server's answer (its decoding of frames, the round trips) is
then paid while the disk is hashed, not after.

Contract: :meth:`Prefetch.stream` yields the chunks of the ``n``-th source, in
order, exactly as the source yielded them, and raises what the source raised;
streams are taken in order, each to its end. At most ``budget`` bytes (plus
one chunk) wait in memory at a time: the thread stops reading the network
while they do. :meth:`Prefetch.close` stops the thread at its next chunk and
closes the source (its connection) there; nothing the caller did not take is
kept. Nothing here is specific to HTTP: a source is any callable that returns
an iterator of bytes. The standard library has no bounded, cancellable
producer of this kind (``queue.Queue`` bounds items, not bytes).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

Source = Callable[[], Iterator[bytes]]
BUDGET = 64 << 20  # bytes held at most while the caller is busy elsewhere


class NotStarted(Exception):
    """The downloads never started (their ``before`` said no)."""


class _End:
    """The marker that ends one source's chunks."""


_END = _End()


class Prefetch:
    """Run ``sources`` one after the other on a thread, from now on (see the module)."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        budget: int = BUDGET,
        before: Callable[[], bool] | None = None,
    ) -> None:
        """``before``, if given, runs first on the thread; when it returns False nothing
        is downloaded, and taking a stream raises :class:`NotStarted`."""
        self._sources = list(sources)
        self._budget = budget
        self._before = before
        self._held = 0
        self._closed = False
        self._taken = 0  # the streams handed to the caller so far
        self._lock = threading.Condition()
        self._items: queue.SimpleQueue[bytes | _End | BaseException] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._before is not None and not self._before():
                self._items.put(NotStarted("the downloads did not start"))
                return
            for source in self._sources:
                if self._closed:
                    return
                chunks = source()
                try:
                    for chunk in chunks:
                        if not self._hold(len(chunk)):
                            return
                        self._items.put(chunk)
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()  # a download's connection is closed here, not left open
                self._items.put(_END)
        except BaseException as exc:  # handed to the caller, who raises it when it takes it
            self._items.put(exc)

    def _hold(self, size: int) -> bool:
        """Wait for room for ``size`` more bytes; False once closed."""
        with self._lock:
            while self._held >= self._budget and not self._closed:
                self._lock.wait()
            self._held += size
            return not self._closed

    def stream(self) -> Iterator[bytes]:
        """The next source's chunks, in order (see the module)."""
        if self._taken >= len(self._sources):
            raise IndexError("every source's stream was taken")
        self._taken += 1
        return self._stream()

    def _stream(self) -> Iterator[bytes]:
        while True:
            item = self._items.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            with self._lock:
                self._held -= len(item)
                self._lock.notify()
            yield item

    def close(self) -> None:
        """Stop the downloads at their next chunk; what was not taken is dropped."""
        with self._lock:
            self._closed = True
            self._lock.notify()
