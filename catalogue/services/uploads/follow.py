"""Feeding a receiver the bytes of a file that another thread appends to, on a thread.

The request that completes a resumable upload (:mod:`.resumable`) appends what it reads
from the socket to the upload's file; a :class:`Follower` reads that file behind it —
first what earlier requests left there, then each new piece, from the page cache — and
hands it to the :class:`~catalogue.services.uploads.receiver.VersionReceiver`. The
socket is thus never held up by the decoder (nor the decoder by the socket), and what a
resumed upload received before is decoded while the rest arrives, not before.

While the thread keeps up, the appending thread hands it each piece it appended as well
(up to QUEUE_BYTES of them), so that it need not read them back; what it missed (it fell
behind, or the bytes were there before) it reads from the file.

The receiver's first bytes are fed on the appending thread (they choose the plan, which
reads the database: a query belongs to the request's own connection and transaction);
the thread then follows from there. Only the thread calls ``write`` after that, and the
appending thread touches the receiver again only after :meth:`Follower.finish` or
:meth:`Follower.stop` has joined it. An error of ``write`` (the image refused) ends the
thread; the next :meth:`Follower.advance` or :meth:`Follower.finish` raises it.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import BinaryIO

from diskimage import CHUNK

# The most bytes handed over in memory and not yet fed; past that, they are read back.
QUEUE_BYTES = 32 << 20


class Follower:
    """Feeds ``write`` the bytes of ``source`` up to what the appender says it holds."""

    def __init__(self, source: BinaryIO, write: Callable[[bytes], None], *, name: str):
        self._fd = source.fileno()
        self._write = write
        self._name = name
        self._cond = threading.Condition()
        self._fed = 0  # by the appending thread, before the thread starts
        self._written = 0
        self._ended = False
        self._stopped = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._queued = 0

    def advance(self, written: int, data: bytes | None = None) -> None:
        """The file now holds ``written`` bytes (zeros seeked over past its end included),
        ``data`` being the last of them if given."""
        self._raise()
        if self._thread is None:
            if written < CHUNK:
                return  # the first bytes are fed here, all at once (see the module's text)
            self._fed = self._feed(0, CHUNK)
            self._written = written
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            return
        with self._cond:
            if data is not None and self._queued + len(data) <= QUEUE_BYTES:
                self._queue.append((written - len(data), data))
                self._queued += len(data)
            self._written = written
            self._cond.notify()

    def finish(self, written: int) -> None:
        """No more bytes come after ``written``: return once all were fed, or raise."""
        if self._thread is None:
            self._feed(0, written)
            return
        with self._cond:
            self._written, self._ended = written, True
            self._cond.notify()
        self._thread.join()
        self._raise()

    def stop(self) -> None:
        """Stop feeding (an error elsewhere); return once the thread has ended."""
        if self._thread is None:
            return
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        position = self._fed
        try:
            while True:
                with self._cond:
                    while not self._stopped and not self._ended and position >= self._written:
                        self._cond.wait()
                    if self._stopped or position >= self._written:
                        return
                    end = self._written
                    handed = list(self._queue)
                    self._queue.clear()
                    self._queued = 0
                for start, data in handed:  # each ends where an advance said the file did
                    if start + len(data) <= position:
                        continue
                    position = self._feed(position, start)  # those it missed
                    if self._stopped:
                        return
                    self._write(data[position - start :] if start < position else data)
                    position = start + len(data)
                position = self._feed(position, end)
        except BaseException as exc:  # handed to the appending thread
            self._error = exc

    def _feed(self, position: int, end: int) -> int:
        while position < end and not self._stopped:
            size = min(CHUNK, end - position)
            data = os.pread(self._fd, size, position)
            if len(data) < size:  # zeros seeked over at the end of the file: a hole to come
                data += bytes(size - len(data))
            self._write(data)
            position += size
        return position
