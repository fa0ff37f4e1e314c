"""Streaming (de)compression: none, gzip (zlib) and zstd.

Contracts:

- :func:`decompressed` turns an iterable of compressed chunks into chunks of
  exactly ``chunk`` raw bytes (the last one may be shorter). Output is bounded
  whatever the ratio — a gigabyte of zeros in a few compressed kilobytes never
  sits in memory. Multi-frame zstd and multi-member gzip are read through.
- :func:`zstd_compressed` turns raw chunks into a zstd stream, multi-threaded.
- zstd goes through ``zstandard`` when importable, else through a ``zstd``
  subprocess (``zstd -dc`` / ``zstd -c -T0``). Corrupt or truncated input raises
  :class:`CompressionError`; so does a source that ends early.
"""

from __future__ import annotations

import contextlib
import io
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from diskimage import CHUNK, DecodeError
from diskimage import zstdframes as frames

try:
    import zstandard
except ImportError:  # pragma: no cover - exercised by forcing the fallback
    zstandard = None  # type: ignore[assignment]

COMPRESSIONS = ("none", "gzip", "zstd")
ZSTD_LEVEL = 3

Chunks = Iterable[bytes | bytearray | memoryview]


class CompressionError(Exception):
    """A compressed stream is corrupt, truncated, or cannot be processed."""


def use_zstandard() -> bool:
    """Whether zstd runs in-process (tests force the subprocess path by patching this)."""
    return zstandard is not None


def decompressed(source: Iterable[bytes], compression: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """Raw bytes of ``source`` (stored with ``compression``), in ``chunk``-sized pieces."""
    if compression == "none":
        return _rechunk(source, chunk)
    if compression == "gzip":
        return _rechunk(_gunzip(source, chunk), chunk)
    if compression == "zstd":
        if use_zstandard():
            return _unzstd_inprocess(source, chunk)
        return _unzstd_subprocess(source, chunk)
    raise CompressionError(f"unknown compression {compression!r} (expected one of {COMPRESSIONS})")


def zstd_compressed(source: Chunks, level: int = ZSTD_LEVEL) -> Iterator[bytes]:
    """``source`` compressed as one zstd stream, with all cores."""
    if use_zstandard():
        return _zstd_inprocess(source, level)
    return _zstd_subprocess(source, level)


# -- helpers ------------------------------------------------------------------


def _rechunk(source: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes per chunk; chunks that already fit pass without a copy."""
    pending = bytearray()
    for piece in source:
        if not pending and len(piece) == size:
            yield bytes(piece)
            continue
        pending += piece
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def _fill(read: Callable[[int], bytes], size: int) -> bytes:
    """Read until ``size`` bytes or end of stream (readers may return short)."""
    data = read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size and (more := read(size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class IterReader(io.RawIOBase):
    """A read-only file over an iterable of byte chunks (for stream readers)."""

    def __init__(self, source: Iterable[bytes]) -> None:
        self._source = iter(source)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            piece = next(self._source, None)
            if piece is None:
                return 0
            self._pending = memoryview(piece)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _gunzip(source: Iterable[bytes], chunk: int) -> Iterator[bytes]:
    decoder = zlib.decompressobj(wbits=31)
    in_member = False  # input of an unfinished member was seen
    for data in source:
        if not data:
            continue
        in_member = True
        while True:
            try:
                out = decoder.decompress(data, chunk)
            except zlib.error as exc:
                raise CompressionError(f"corrupt gzip stream: {exc}") from exc
            if out:
                yield out
            if decoder.eof:  # another member may follow (pigz, cat a.gz b.gz)
                data = decoder.unused_data
                decoder = zlib.decompressobj(wbits=31)
                in_member = bool(data)
                if not data:
                    break
                continue
            data = decoder.unconsumed_tail
            if not data and len(out) < chunk:  # a full chunk may leave output pending
                break
    if in_member:
        raise CompressionError("truncated gzip stream")


def _unzstd_inprocess(source: Iterable[bytes], chunk: int) -> Iterator[bytes]:
    # zstandard's bounded stream reader stops quietly at a truncated frame:
    # the frame walker sees the headers go by and tells the difference.
    walker = frames.ZstdFrameWalker()
    # zstandard reads from any object with read(); its stubs ask for a whole IO[bytes].
    reader = zstandard.ZstdDecompressor().stream_reader(
        IterReader(walker.watch(source)),  # type: ignore[arg-type]
        read_size=CHUNK,
        read_across_frames=True,
    )
    try:
        while data := _fill(reader.read, chunk):
            yield data
    except (zstandard.ZstdError, DecodeError) as exc:
        raise CompressionError(f"corrupt zstd stream: {exc}") from exc
    if not walker.complete:
        raise CompressionError("truncated zstd stream")


def zstd_frames(source: Iterable[bytes]) -> Iterator[list[memoryview]]:
    """The frames of a zstd stream as they complete, each as the views of ``source``'s
    chunks that hold it, in order (skippable frames too).

    Nothing is copied: a frame is never joined into bytes of its own. The views keep
    their chunks alive; joining them would put every compressed byte into freshly
    allocated memory, whose page faults cost the agent as much as a third of the
    decoding. Only headers are parsed (:class:`diskimage.zstdframes.ZstdFrameWalker`);
    a corrupt or truncated stream raises :class:`CompressionError`.
    """
    walker = frames.ZstdFrameWalker()
    parts: list[memoryview] = []  # what came of the current frame so far
    try:
        for data in source:
            walker.feed(data)
            view = memoryview(data).cast("B")
            while walker.ends and walker.ends[0] <= walker.offset:  # frames ended in ``data``
                cut = walker.ends.pop(0) - (walker.offset - len(view))
                parts.append(view[:cut])
                view = view[cut:]
                yield parts
                parts = []
            if len(view):
                parts.append(view)
    except DecodeError as exc:
        raise CompressionError(f"corrupt zstd stream: {exc}") from exc
    if parts or not walker.complete:
        raise CompressionError("truncated zstd stream")


def _zstd_inprocess(source: Chunks, level: int) -> Iterator[bytes]:
    cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    encoder = cctx.compressobj()
    for data in source:
        out = encoder.compress(data)
        if out:
            yield out
    yield encoder.flush()


# -- the zstd command, when zstandard is missing ------------------------------


def _zstd_command(*args: str) -> list[str]:
    import shutil  # the command is the fallback: not imported at start-up

    path = shutil.which("zstd")
    if path is None:
        raise CompressionError("zstd needs the zstandard module or the zstd command")
    return [path, "-q", *args]


class _Pipe:
    """A subprocess fed by a thread; read its output with :meth:`read`."""

    def __init__(self, command: list[str], source: Chunks) -> None:
        import subprocess  # the command is the fallback: not imported at start-up

        self.proc = subprocess.Popen(  # noqa: S603 - a fixed command, no shell
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, args=(source,), daemon=True)
        self._feeder.start()

    def _feed(self, source: Chunks) -> None:
        stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        try:
            for data in source:
                stdin.write(data)
        except BrokenPipeError:
            pass  # the command died: its exit status says why
        except BaseException as exc:  # the source failed: stop the command
            self.error = exc
            self.proc.kill()
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def chunks(self, read: Callable[[IO[bytes]], bytes]) -> Iterator[bytes]:
        """The command's output; raises if it or the source failed.

        Stopping early (closing the generator) kills the command quietly.
        """
        stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        complete = False
        try:
            while data := read(stdout):
                yield data
            complete = True
        finally:
            if not complete:
                self.proc.kill()
            self._reap(check=complete)

    def _reap(self, *, check: bool) -> None:
        self._feeder.join()
        code = self.proc.wait()
        stderr = self.proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]
        if not check:
            return
        if self.error is not None:
            raise self.error
        if code != 0:
            raise CompressionError(f"zstd failed ({code}): {stderr or 'no message'}")


def _unzstd_subprocess(source: Iterable[bytes], chunk: int) -> Iterator[bytes]:
    pipe = _Pipe(_zstd_command("-dc"), source)
    return pipe.chunks(lambda out: out.read(chunk))


def _zstd_subprocess(source: Chunks, level: int) -> Iterator[bytes]:
    pipe = _Pipe(_zstd_command("-c", "-T0", f"-{level}"), source)
    return pipe.chunks(lambda out: out.read1(CHUNK))  # type: ignore[attr-defined]
