"""zstd's frame structure (RFC 8878), followed over a stream without decoding it.

zstandard's stream decoders cannot tell whether their input ended inside a
frame, nor where a frame ends; a server receiving an upload and an agent
cutting a download into its data ranges both need to. :class:`ZstdFrameWalker`
reads only headers — a few bytes per 128 KiB block — and skips block
contents, so it costs nothing next to decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from diskimage import DecodeError, TruncatedError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MASK, _SKIPPABLE = 0xFFFFFFF0, 0x184D2A50  # any of 16 skippable frame magics


class ZstdFrameWalker:
    """Follows zstd frame and block headers over a stream fed in pieces of any size.

    ``complete`` is true when the bytes fed so far end exactly after a whole
    frame; ``ends`` collects where each frame (skippable ones too) ended in
    the stream (as soon as their last header is read: the end may be further
    than the bytes fed so far), for whoever takes them out. Each frame's content size goes to
    ``on_size`` as its header arrives; ``unknown`` tells whether a frame did
    not say. With :meth:`write` and :meth:`finish` it stands in for a decoder
    where nothing is decoded (a zstd upload stored as sent).
    """

    def __init__(self, on_size: Callable[[int], None] | None = None) -> None:
        self._buf = bytearray()
        self._want = 4  # header bytes to collect before the next step
        self._skip = 0  # content bytes to pass over
        self._step: Callable[[bytes], None] = self._magic
        self._checksum = False
        self._size_bytes = 0  # width of the current frame's content size field
        self._on_size = on_size
        self.unknown = False
        self.frames = 0  # frames and skippable frames ended
        self.offset = 0  # stream bytes seen
        self.ends: list[int] = []

    @property
    def complete(self) -> bool:
        return self.frames > 0 and self._between_frames()

    def _between_frames(self) -> bool:
        return self._step == self._magic and not self._buf and not self._skip

    def finish(self) -> None:
        """The stream ended: TruncatedError unless it ended right after a whole frame."""
        if not self.complete:
            raise TruncatedError("The zstd data ends in the middle of a frame: is it complete?")

    def watch(self, source: Iterable[bytes]) -> Iterator[bytes]:
        """``source`` unchanged, fed to the walker on its way."""
        for data in source:
            self.feed(data)
            yield data

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self._skip:
                taken = min(self._skip, size - pos)
                self._skip -= taken
                pos += taken
                continue
            taken = min(self._want - len(self._buf), size - pos)
            self._buf += data[pos : pos + taken]
            pos += taken
            if len(self._buf) == self._want:
                header = bytes(self._buf)
                self._buf.clear()
                ended = self.frames
                self._step(header)
                if self.frames > ended:
                    self.ends.append(self.offset + pos + self._skip)
        self.offset += size

    write = feed

    def _expect(self, want: int, step: Callable[[bytes], None], skip: int = 0) -> None:
        self._want, self._step, self._skip = want, step, skip

    def _magic(self, header: bytes) -> None:
        magic = int.from_bytes(header, "little")
        if header == ZSTD_MAGIC:
            self._expect(1, self._descriptor)
        elif magic & _SKIPPABLE_MASK == _SKIPPABLE:
            self._expect(4, self._skippable_size)
        else:
            raise DecodeError("This is not zstd data (no frame magic where a frame begins).")

    def _skippable_size(self, header: bytes) -> None:
        self.frames += 1
        self._expect(4, self._magic, int.from_bytes(header, "little"))

    def _descriptor(self, header: bytes) -> None:
        descriptor = header[0]
        single_segment = bool(descriptor & 0x20)
        self._checksum = bool(descriptor & 0x04)
        dictionary = (0, 1, 2, 4)[descriptor & 0x03]
        self._size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        # Window descriptor, dictionary id, content size: at least one byte in all.
        self._expect((0 if single_segment else 1) + dictionary + self._size_bytes, self._rest)

    def _rest(self, header: bytes) -> None:
        if not self._size_bytes:
            self.unknown = True
        elif self._on_size is not None:
            size = int.from_bytes(header[len(header) - self._size_bytes :], "little")
            self._on_size(size + 256 if self._size_bytes == 2 else size)  # RFC 8878, 3.1.1.1.4
        self._expect(3, self._block)

    def _block(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        last, kind, size = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            raise DecodeError("The zstd data is corrupt: a reserved block type.")
        content = 1 if kind == 1 else size  # an RLE block holds one byte
        if not last:
            self._expect(3, self._block, content)
        elif self._checksum:
            self._expect(4, self._end, content)
        else:
            self.frames += 1
            self._expect(4, self._magic, content)

    def _end(self, _checksum: bytes) -> None:
        self.frames += 1
        self._expect(4, self._magic)


def zstd_frames(source: Iterable[bytes]) -> Iterator[bytes]:
    """The frames of a zstd stream, one ``bytes`` each, as they complete.

    Only headers are parsed; a stream that ends inside a frame raises
    TruncatedError. Skippable frames are yielded too.
    """
    walker = ZstdFrameWalker()
    parts: list[bytes | memoryview] = []  # what came of the current frame so far
    for data in source:
        walker.feed(data)
        parts.append(data)
        while walker.ends and walker.ends[0] <= walker.offset:  # frames ended in ``data``
            end = walker.ends.pop(0)
            cut = end - (walker.offset - len(data))  # where the frame ends in ``data``
            frame = b"".join([*parts[:-1], memoryview(data)[:cut]])
            data = memoryview(data)[cut:]
            parts = [data] if len(data) else []
            yield frame
    if parts or not walker.complete:
        raise TruncatedError("The zstd data ends in the middle of a frame: is it complete?")
