"""zstd decoded block by block, so that blocks of zeros come out as holes.

A disk image is mostly zeros, and a zstd encoder stores a block of one
repeated byte as an RLE block: four bytes for up to 128 KiB. A stream
decoder still writes every one of those zeros out, and whoever takes its
output reads them all again to find that they are zeros: for a 6 GiB image
holding 600 MiB of data, 5.4 GiB written and scanned for nothing, more time
than the data itself takes.

:class:`BlockZstdDecoder` drives libzstd's block-level ("bufferless") API,
through ctypes, the way libzstd's own stream decoder does:

* every block is decoded by libzstd into a ring buffer of the frame's window
  size (later blocks copy from it), with the ring's size and wrapping rule
  the stream decoder's own, so that every check it makes is made here too:
  block structure, window, the frame's content size and checksum;
* a block that is an RLE block of zero bytes reaches ``on_hole(length)``,
  with its length only;
* the output of every other block reaches ``sink(bytes)``, consecutive
  blocks together, in pieces of at most ``CHUNK`` bytes.

Any number of frames, and skippable frames, are accepted, as ``zstd -d``
accepts them. The ring takes at most ``MAX_WINDOW`` plus two blocks however
large the output, in pages taken only as they are written: a small "bomb"
cannot expand in memory.

``checksum=False`` leaves the frames' content checksums (XXH64 of every
output byte, zeros included: most of the time a mostly empty image takes)
to the caller, in :attr:`BlockZstdDecoder.checksums`. Then a run of zero
blocks is not even decoded: they are recognised in the compressed bytes,
and libzstd is given only what a later block may copy from — the last
window's worth of zeros, as history (``ZSTD_insertBlock``) in pages that are
never written — with the frame's content size checked here instead.

The shared library is the system's ``libzstd.so.1`` (Debian's ``libzstd1``,
which the ``zstd`` tool depends on), loaded by :mod:`diskimage.zstdlib`;
:func:`available` tells whether it was found. Recent ``zstd.h`` marks this
block-level API deprecated (it stays exported from the shared library), so it
is held to a contract: ``tests/diskimage/test_zstdblocks_contract.py`` checks,
against the libzstd that BAAS installs, every symbol and behaviour used here.
Without it — missing, too old, or turned off with ``BAAS_ZSTD_BLOCK_API=off``
in the environment — callers use zstandard's stream decoder instead
(:func:`diskimage.decoders.decoder_for`): the same bytes, the zeros written
out and scanned again, slower. What this module reads of the frame format
itself (frame and block headers, runs of zero blocks) is
:mod:`diskimage.zstdlayout`'s.
"""

from __future__ import annotations

import ctypes
import mmap
import weakref
from collections.abc import Callable

from diskimage import CHUNK, zstdlib
from diskimage.zstdlayout import (
    BLOCK_MAX,
    CONTENT_SIZE_UNKNOWN,
    MAGIC,
    RLE,
    SINGLE_SEGMENT,
    Frame,
    header_size,
    without_content_size,
    zero_blocks,
)
from diskimage.zstdlib import SWITCH, FrameHeader, available

__all__ = ["BLOCK_MAX", "MAX_WINDOW", "SWITCH", "BlockZstdDecoder", "ZstdBlockError", "available"]

MAX_WINDOW = 1 << 27  # libzstd's default limit for stream decoding (ZSTD_WINDOWLOG_LIMIT_DEFAULT)
_WILDCOPY = 2 * 32  # libzstd's WILDCOPY_OVERLENGTH, twice, as its stream decoder sizes its ring


class ZstdBlockError(ValueError):
    """The input is not valid zstd, or needs more than this decoder allows."""


class BlockZstdDecoder:
    """Decodes zstd pushed in with :meth:`write`; zero blocks reach ``on_hole``.

    :meth:`finish` checks that the input ended after a whole frame. Errors
    raise :class:`ZstdBlockError` with the reason.

    With ``checksum=False``, the content checksums are not checked here but
    listed in :attr:`checksums` — ``(start, end, xxh64_low32)`` per frame, the
    raw bytes ``[start, end)`` it covers — for the caller to check; and a long
    run of zero blocks is not even given to libzstd, but for the zeros a later
    block may copy from (the last window's worth, and then some): the frame
    is given to libzstd with the header's content size left out, and its
    size is checked here instead.
    """

    def __init__(
        self,
        sink: Callable[[bytes], None],
        on_hole: Callable[[int], None],
        *,
        checksum: bool = True,
    ):
        libs = None if zstdlib.switched_off() else zstdlib.load()
        if libs is None:
            raise RuntimeError("libzstd's block-level API is not available here")
        self._lib, self._quick = libs
        lib = self._quick
        self._sink = sink
        self._on_hole = on_hole
        self._dctx = lib.ZSTD_createDCtx()
        if not self._dctx:
            raise MemoryError("ZSTD_createDCtx")
        self._free = weakref.finalize(self, lib.ZSTD_freeDCtx, self._dctx)
        self._verify = checksum
        if not checksum:
            self._check(lib.ZSTD_DCtx_setParameter(self._dctx, zstdlib.FORCE_IGNORE_CHECKSUM, 1))
        self.checksums: list[tuple[int, int, int]] = []
        self.size = 0  # raw bytes decoded so far, holes included
        self._frames = 0
        self._state: Callable[[bytes, int, int], None] = self._on_start
        self._need = 5  # bytes the state takes next
        self._carry = b""  # the start of those bytes, from an earlier write
        self._frame = Frame()
        self._ring: tuple[mmap.mmap, ctypes.c_char] | None = None
        self._zeros: tuple[mmap.mmap, ctypes.c_char] | None = None
        self._ring_address = 0
        self._ring_size = 0
        self._at = 0  # where the next block is decoded in the ring
        self._pending = 0  # where the decoded bytes not yet handed on start in the ring

    # --- Input ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._free.alive:
            raise ZstdBlockError("The decoder was closed.")
        if not isinstance(data, bytes):
            data = bytes(data)
        position, end = 0, len(data)
        if self._carry:
            position = self._need - len(self._carry)
            self._carry += data[:position]
            if len(self._carry) < self._need:
                return
            piece, self._carry = self._carry, b""
            self._feed(piece, 0)
        while True:
            if self._frame.drops and self._state == self._on_block_header:
                position = self._zero_run(data, position)
            if end - position < self._need:
                break
            taken = self._need
            self._feed(data, position)
            position += taken
        if self._state == self._on_skip and position < end:  # skippable content
            self._need -= end - position
            position = end
        self._carry = data[position:]

    def finish(self) -> None:
        """The input ended: hand on what is left; ZstdBlockError unless a frame just ended."""
        self._flush()
        if self._carry or self._state != self._on_start or not self._frames:
            raise ZstdBlockError("The zstd data ends in the middle of a frame: is it complete?")
        self.close()

    def close(self) -> None:
        """Free libzstd's context (also done when the decoder is collected)."""
        self._free()
        self._ring = self._zeros = None

    # --- The frame format, piece by piece (RFC 8878) -----------------------------------

    def _feed(self, data: bytes, position: int) -> None:
        """The state takes ``self._need`` bytes of ``data`` at ``position``."""
        self._state(data, position, self._need)

    def _on_start(self, data: bytes, position: int, size: int) -> None:
        magic = data[position : position + 4]
        if magic == MAGIC:
            descriptor = data[position + 4]
            self._frame = Frame(start=self.size, prefix=data[position : position + 5])
            self._expect(self._on_header, header_size(descriptor) - 5)
        elif magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:
            self._frame = Frame(prefix=data[position + 4 : position + 5])
            self._expect(self._on_skip_size, 3)
        else:
            raise ZstdBlockError("This is not zstd data (no frame magic where a frame begins).")

    def _on_skip_size(self, data: bytes, position: int, size: int) -> None:
        length = int.from_bytes(self._frame.prefix + data[position : position + 3], "little")
        self._expect(self._on_skip, length)
        if not length:
            self._end_skippable()

    def _on_skip(self, data: bytes, position: int, size: int) -> None:
        self._end_skippable()

    def _end_skippable(self) -> None:
        self._frames += 1
        self._expect(self._on_start, 5)

    def _on_header(self, data: bytes, position: int, size: int) -> None:
        frame = self._frame
        header = frame.prefix + data[position : position + size]
        info = FrameHeader()
        self._check(self._quick.ZSTD_getFrameHeader(ctypes.byref(info), header, len(header)))
        if info.windowSize > MAX_WINDOW:
            raise ZstdBlockError(
                f"The zstd data needs a {info.windowSize >> 20} MiB window; at most "
                f"{MAX_WINDOW >> 20} MiB is accepted (compress without --long, or with "
                "--long=27 or less)."
            )
        frame.content_size = info.frameContentSize
        frame.checksum = bool(info.checksumFlag)
        frame.window = info.windowSize
        frame.block_max = info.blockSizeMax
        descriptor = header[4]
        # Blocks may be left out only where libzstd neither checks the content size (left
        # out of the header it is given) nor the checksum, and a window is declared.
        frame.drops = not self._verify and not descriptor & SINGLE_SEGMENT
        if frame.drops:
            header = without_content_size(header)
        self._check(self._quick.ZSTD_decompressBegin(self._dctx))
        self._continue(header[:5])
        self._continue(header[5:])
        self._make_ring(info, frame.drops)
        frame.zero_blocks = zero_blocks(frame.block_max)
        self._expect(self._on_block_header, 3)

    def _zero_run(self, data: bytes, position: int) -> int:
        """Take the whole zero blocks that start at ``position`` at once; return where they end.

        Most of a disk image is zstd blocks of 128 KiB of zeros, 4 bytes each:
        a run of them is one hole, found by one regular expression.
        """
        frame = self._frame
        found = frame.zero_blocks.match(data, position)
        if found is None:
            return position
        blocks = (found.end() - position) // 4
        length = blocks * frame.block_max
        self._flush()
        self._grow(length)
        self._on_hole(length)
        frame.held_bytes += length
        if frame.held_bytes < frame.window:
            frame.held.extend([data[position : position + 3]] * blocks)
        else:  # a window of zeros at least: what libzstd needs is known
            frame.held.clear()
        return found.end()

    def _on_block_header(self, data: bytes, position: int, size: int) -> None:
        header = data[position : position + 3]
        value = int.from_bytes(header, "little")
        kind, length = (value >> 1) & 3, value >> 3
        if length > self._frame.block_max:
            raise ZstdBlockError("The zstd data is corrupt: a block larger than its frame allows.")
        self._frame.block = (header, bool(value & 1), kind, length)
        body = 1 if kind == RLE else length
        self._expect(self._on_block, body)
        if not body:
            self._on_block(b"", 0, 0)

    def _on_block(self, data: bytes, position: int, size: int) -> None:
        frame = self._frame
        header, last, kind, length = frame.block
        zeros = kind == RLE and data[position] == 0
        if zeros:
            self._flush()
            self._grow(length)
            self._on_hole(length)
            if frame.drops and not last:
                frame.held_bytes += length
                if frame.held_bytes < frame.window:
                    frame.held.append(header)
                else:  # a window of zeros at least: what libzstd needs is known
                    frame.held.clear()
                self._expect(self._on_block_header, 3)
                return
        if frame.held_bytes:
            self._release()
        self._continue(header)
        if size:
            self._decode(data, position, size, handed_on=not zeros)
        if not last:
            self._expect(self._on_block_header, 3)
        elif frame.checksum:
            self._expect(self._on_checksum, 4)
        else:
            self._end_frame()

    def _on_checksum(self, data: bytes, position: int, size: int) -> None:
        field = data[position : position + 4]
        self._continue(field)
        if not self._verify:
            self.checksums.append((self._frame.start, self.size, int.from_bytes(field, "little")))
        self._end_frame()

    def _end_frame(self) -> None:
        frame = self._frame
        if self._quick.ZSTD_nextSrcSizeToDecompress(self._dctx) != 0:
            raise ZstdBlockError("The zstd data is corrupt: a frame does not end where it should.")
        decoded = self.size - frame.start
        if frame.drops and frame.content_size not in (CONTENT_SIZE_UNKNOWN, decoded):
            raise ZstdBlockError(
                f"The zstd data is corrupt: a frame holds {decoded} bytes, "
                f"its header says {frame.content_size}."
            )
        self._flush()
        self._frames += 1
        self._at = self._pending = 0  # the ring stays, for the next frame
        self._expect(self._on_start, 5)

    def _expect(self, state: Callable[[bytes, int, int], None], need: int) -> None:
        self._state, self._need = state, need

    # --- Decoding ------------------------------------------------------------------

    def _release(self) -> None:
        """Give libzstd the zeros held back, before the block that follows them.

        A run shorter than the window is given block by block. A longer one is
        given as history only (ZSTD_insertBlock): a window of zeros, in pages
        that are never written, and the ring starts over after them.
        """
        frame = self._frame
        if frame.held_bytes >= frame.window:
            length = min(frame.held_bytes, frame.window + 2 * frame.block_max)
            self._flush()
            self._quick.ZSTD_insertBlock(self._dctx, self._zero_pages(length), length)
            self._at = self._pending = 0
        else:
            for header in frame.held:
                self._continue(header)
                self._decode(b"\0", 0, 1, handed_on=False)
        frame.held.clear()
        frame.held_bytes = 0

    def _zero_pages(self, length: int) -> int:
        """The address of ``length`` zero bytes that stay zero (anonymous pages, not touched)."""
        if self._zeros is None or len(self._zeros[0]) < length:
            self._zeros = _pages(length)
        return ctypes.addressof(self._zeros[1])

    def _make_ring(self, info: FrameHeader, drops: bool) -> None:
        """The ring libzstd's stream decoder would use (ZSTD_decodingBufferSize_min)."""
        content = CONTENT_SIZE_UNKNOWN if drops else info.frameContentSize
        size = info.windowSize + info.blockSizeMax + BLOCK_MAX + _WILDCOPY
        self._frame.wraps = content > size  # and then back to the start as it does
        self._ring_size = max(min(size, content), 1)
        if self._ring is None or len(self._ring[0]) < self._ring_size:
            self._ring = _pages(self._ring_size)  # memory only as it is written
        self._ring_address = ctypes.addressof(self._ring[1])
        self._at = self._pending = 0

    def _continue(self, piece: bytes) -> None:
        """Give libzstd a piece that decodes to nothing (a header, a checksum)."""
        self._check(self._quick.ZSTD_decompressContinue(self._dctx, None, 0, piece, len(piece)))

    def _decode(self, data: bytes, position: int, size: int, *, handed_on: bool) -> None:
        """Give libzstd a piece of a block, decoded into the ring; hand its output on or not."""
        frame = self._frame
        if frame.wraps and self._at + frame.block_max > self._ring_size:
            self._flush()
            self._at = self._pending = 0
        elif self._at - self._pending + frame.block_max > CHUNK:
            self._flush()  # the pieces handed on stay within CHUNK
        base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        assert base is not None  # the buffer of a bytes object is never NULL
        address = base + position
        out = self._check(
            self._lib.ZSTD_decompressContinue(
                self._dctx,
                self._ring_address + self._at,
                self._ring_size - self._at,
                address,
                size,
            )
        )
        if not handed_on:
            self._flush()
            self._at += out
            self._pending = self._at
            return
        self._at += out
        self._grow(out)
        if self._at - self._pending >= CHUNK:
            self._flush()

    def _grow(self, length: int) -> None:
        """``length`` more bytes decoded: refused at once past the frame's announced size
        (libzstd checks it only at the frame's end: a "bomb" would be decoded whole first)."""
        self.size += length
        frame = self._frame
        if (
            frame.content_size != CONTENT_SIZE_UNKNOWN
            and self.size - frame.start > frame.content_size
        ):
            raise ZstdBlockError(
                "The zstd data is corrupt: a frame decodes to more than the "
                f"{frame.content_size} bytes its header announces."
            )

    def _flush(self) -> None:
        """Hand on the decoded bytes not handed on yet."""
        if self._at > self._pending:
            self._sink(
                ctypes.string_at(self._ring_address + self._pending, self._at - self._pending)
            )
        self._pending = self._at

    def _check(self, code: int) -> int:
        if self._quick.ZSTD_isError(code):
            reason = self._quick.ZSTD_getErrorName(code).decode()
            raise ZstdBlockError(f"The zstd data is corrupt: {reason}.")
        return code


def _pages(length: int) -> tuple[mmap.mmap, ctypes.c_char]:
    """``length`` bytes of anonymous memory (zeros; pages are taken as they are written),
    and a ctypes view of it for its address."""
    pages = mmap.mmap(-1, length)
    return pages, ctypes.c_char.from_buffer(pages)
