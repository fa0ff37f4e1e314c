"""Android sparse images, decoded as they stream: a raw disk image sent without its holes.

The sparse image format of Android's libsparse — what ``img2simg`` writes,
``simg2img`` reads and ``fastboot`` flashes — carries a raw image as a
sequence of chunks, each covering a whole number of blocks of the output:

* a 28-byte file header: magic ``0xed26ff3a``, major version 1, the sizes of
  the file and chunk headers, the block size (a multiple of 4), the number of
  blocks of the image and the number of chunks;
* ``RAW`` chunks carry their blocks' bytes, ``FILL`` chunks a 4-byte pattern
  repeated over their blocks, ``DONT_CARE`` chunks none (zeros, here), and a
  ``CRC32`` chunk the CRC-32 of every byte of the image before it.

A client that knows where its file's holes are (``SEEK_HOLE``) sends only the
data, and the zeros cost nothing on the wire: a 6 GiB disk holding 600 MiB is
a 600 MiB upload. :class:`SparseImageDecoder` hands the data on in pieces of
at most ``CHUNK`` bytes and the zeros as lengths, like the zstd block decoder;
:func:`encoded` writes one of an image held in memory.

CRC-32 chunks are checked after the fact against the stored image
(:func:`image_crc32`), from its data ranges alone: the CRC of a run of zeros
is computed, not hashed byte by byte (:func:`crc32_zeros`).
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from diskimage import BLOCK, CHUNK
from diskimage.holes import data_runs

MAGIC = 0xED26FF3A
MEDIA_TYPE = "application/vnd.android.sparse-image"
FILE_SUFFIXES = (".simg", ".sparse.img")
# magic, major and minor version, file header size, chunk header size, block size,
# blocks in the image, chunks in the file, image checksum (unused by libsparse).
HEADER = struct.Struct("<IHHHHIIII")
# type, reserved, blocks of the image it covers, bytes in the file with its header.
CHUNK_HEADER = struct.Struct("<HHII")
RAW, FILL, DONT_CARE, CRC32 = 0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4

Sink = Callable[[bytes], None]


class SparseImageError(ValueError):
    """The bytes are not a valid Android sparse image."""


def is_sparse_image(head: bytes) -> bool:
    """Whether ``head`` starts with a sparse image header this decoder reads."""
    if len(head) < HEADER.size:
        return False
    magic, major, _minor, file_header, chunk_header, *_ = HEADER.unpack_from(head)
    return bool(
        magic == MAGIC
        and major == 1
        and file_header >= HEADER.size
        and chunk_header >= CHUNK_HEADER.size
    )


def declared_size(head: bytes) -> int | None:
    """The raw size a sparse image's header announces, or None if ``head`` is not one."""
    if not is_sparse_image(head):
        return None
    _, _, _, _, _, block_size, blocks, _, _ = HEADER.unpack_from(head)
    size: int = block_size * blocks
    return size


class SparseImageDecoder:
    """Decodes a sparse image written to it in pieces of any size.

    Data reaches ``sink`` as immutable ``bytes`` of at most :data:`~diskimage.CHUNK`
    bytes; zeros (``DONT_CARE`` chunks, ``FILL`` chunks of zeros) reach
    ``on_hole`` as lengths. ``crc_checks`` lists the CRC-32 chunks met, as
    (raw bytes before it, CRC-32 expected), for the caller to check.
    ``chunk_begins(kind, first block, blocks)``, when given, hears of each chunk
    as it begins, before its bytes: a delta (:mod:`diskimage.sparsedelta`) tells a
    ``DONT_CARE`` chunk ("as in the base") from a ``FILL`` of zeros that way.
    """

    def __init__(
        self,
        sink: Sink,
        on_hole: Callable[[int], None],
        chunk_begins: Callable[[int, int, int], None] | None = None,
    ):
        self._sink = sink
        self._on_hole = on_hole
        self._chunk_begins = chunk_begins
        self._state = "header"
        self._need = HEADER.size  # bytes of the field being collected
        self._field = b""
        self._skip = 0  # bytes to pass over (header bytes of a later format revision)
        self._data = 0  # bytes of a RAW chunk still to hand on
        self._chunk: tuple[int, int] = (0, 0)  # type and blocks of the chunk being read
        self.block_size = 0
        self.blocks = 0  # blocks the header announces
        self.chunks = 0  # chunks the header announces
        self._chunk_header = CHUNK_HEADER.size
        self._blocks_seen = 0
        self._chunks_seen = 0
        self.crc_checks: list[tuple[int, int]] = []
        self._fills: dict[bytes, bytes] = {}

    @property
    def size(self) -> int:
        """The raw size the header announces (0 before it arrived)."""
        return self.block_size * self.blocks

    def write(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._data:
                take = min(self._data, end - pos)
                self._emit_data(data, pos, take)
                self._data -= take
                pos += take
                if not self._data:
                    self._next_chunk()
            elif self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._after_skip()
            else:
                take = min(self._need - len(self._field), end - pos)
                self._field += data[pos : pos + take]
                pos += take
                if len(self._field) == self._need:
                    field, self._field = self._field, b""
                    getattr(self, f"_on_{self._state}")(field)

    def finish(self) -> None:
        """The input ended: raise unless it ended right after the last chunk announced."""
        if self._state != "chunk" or self._field or self._data or self._skip:
            raise SparseImageError(
                "The sparse image ends in the middle of a chunk: is it complete?"
            )
        if self._chunks_seen != self.chunks or self._blocks_seen != self.blocks:
            raise SparseImageError(
                f"The sparse image ends after {self._chunks_seen} of its {self.chunks} chunks "
                f"({self._blocks_seen} of {self.blocks} blocks): is it complete?"
            )

    # --- State, for a stream decoded over several requests ------------------------

    def state(self) -> dict[str, Any]:
        """Where the decoder is, as plain values (JSON): what :meth:`restore` takes to go
        on from the same byte of the stream. Valid between two ``write`` calls."""
        return {
            "state": self._state,
            "need": self._need,
            "field": self._field.hex(),
            "skip": self._skip,
            "data": self._data,
            "chunk": list(self._chunk),
            "block_size": self.block_size,
            "blocks": self.blocks,
            "chunks": self.chunks,
            "chunk_header": self._chunk_header,
            "blocks_seen": self._blocks_seen,
            "chunks_seen": self._chunks_seen,
            "crc_checks": [list(check) for check in self.crc_checks],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from where :meth:`state` was taken (of a decoder of the same stream)."""
        self._state, self._need = str(state["state"]), int(state["need"])
        self._field = bytes.fromhex(state["field"])
        self._skip, self._data = int(state["skip"]), int(state["data"])
        kind, blocks = state["chunk"]
        self._chunk = (int(kind), int(blocks))
        self.block_size, self.blocks = int(state["block_size"]), int(state["blocks"])
        self.chunks, self._chunk_header = int(state["chunks"]), int(state["chunk_header"])
        self._blocks_seen, self._chunks_seen = int(state["blocks_seen"]), int(state["chunks_seen"])
        self.crc_checks = [(int(at), int(crc)) for at, crc in state["crc_checks"]]

    # --- Fields ------------------------------------------------------------------

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _on_header(self, field: bytes) -> None:
        if not is_sparse_image(field):
            raise SparseImageError(
                "This is not an Android sparse image of version 1 (no valid header)."
            )
        _, _, _, file_header, chunk_header, block_size, blocks, chunks, _ = HEADER.unpack(field)
        if block_size == 0 or block_size % 4:
            raise SparseImageError(
                f"The sparse image's block size ({block_size}) is not a multiple of 4."
            )
        self.block_size, self.blocks, self.chunks = block_size, blocks, chunks
        self._chunk_header = chunk_header
        self._skip = file_header - HEADER.size
        self._expect("chunk", CHUNK_HEADER.size)
        if not self._skip:
            self._after_skip()

    def _after_skip(self) -> None:
        """Header bytes of a later revision were passed over: go on with what follows."""
        if self._state == "chunk_rest":
            self._start_chunk()
        else:
            self._next_chunk(counted=False)

    def _on_chunk(self, field: bytes) -> None:
        kind, _reserved, blocks, total = CHUNK_HEADER.unpack(field)
        number = self._chunks_seen + 1
        if number > self.chunks:
            raise SparseImageError(
                f"The sparse image has more chunks than the {self.chunks} its header announces."
            )
        if self._blocks_seen + blocks > self.blocks:
            raise SparseImageError(
                f"Chunk {number} of the sparse image goes past the {self.blocks} blocks "
                "its header announces."
            )
        payload = {RAW: blocks * self.block_size, FILL: 4, DONT_CARE: 0, CRC32: 4}.get(kind)
        if payload is None:
            raise SparseImageError(
                f"Chunk {number} of the sparse image has an unknown type 0x{kind:04x}."
            )
        if total != self._chunk_header + payload:
            raise SparseImageError(
                f"Chunk {number} of the sparse image claims {total} bytes; a chunk of its "
                f"type and size has {self._chunk_header + payload}."
            )
        self._chunk = (kind, blocks)
        self._skip = self._chunk_header - CHUNK_HEADER.size
        self._state = "chunk_rest"
        if not self._skip:
            self._start_chunk()

    def _start_chunk(self) -> None:
        kind, blocks = self._chunk
        if self._chunk_begins is not None:
            self._chunk_begins(kind, self._blocks_seen, blocks)
        length = blocks * self.block_size
        if kind == RAW:
            self._data = length
            if not length:
                self._next_chunk()
        elif kind == DONT_CARE:
            if length:
                self._on_hole(length)
            self._next_chunk()
        else:
            self._expect("fill" if kind == FILL else "crc", 4)

    def _on_fill(self, pattern: bytes) -> None:
        length = self._chunk[1] * self.block_size
        if pattern == b"\0\0\0\0":
            if length:
                self._on_hole(length)
        else:
            piece = self._fills.get(pattern)
            if piece is None:
                piece = self._fills[pattern] = pattern * (CHUNK // 4)
            for start in range(0, length, CHUNK):
                self._sink(piece if length - start >= CHUNK else piece[: length - start])
        self._next_chunk()

    def _on_crc(self, field: bytes) -> None:
        self.crc_checks.append(
            (self._blocks_seen * self.block_size, int.from_bytes(field, "little"))
        )
        self._next_chunk()

    def _next_chunk(self, *, counted: bool = True) -> None:
        if counted:
            self._chunks_seen += 1
            self._blocks_seen += self._chunk[1]
        self._expect("chunk", CHUNK_HEADER.size)

    def _emit_data(self, data: bytes, pos: int, length: int) -> None:
        if pos == 0 and length == len(data) <= CHUNK:
            self._sink(data)
            return
        for start in range(pos, pos + length, CHUNK):
            self._sink(data[start : min(start + CHUNK, pos + length)])


# --- Encoding ------------------------------------------------------------------------


def encoded(image: bytes | bytearray, *, block: int = BLOCK) -> Iterator[bytes]:
    """``image`` as a sparse image: its data blocks as ``RAW`` chunks, its runs of zero
    blocks as ``DONT_CARE`` chunks (nothing on the wire). ``len(image)`` must be a
    whole number of blocks, as the format counts the image in blocks."""
    if len(image) % block:
        raise ValueError(f"a sparse image holds whole {block}-byte blocks, not {len(image)} bytes")
    chunks: list[tuple[int, int, int]] = []  # kind, start, end
    position = 0
    for start, end in data_runs(image) if block == BLOCK else [(0, len(image))]:
        if start > position:
            chunks.append((DONT_CARE, position, start))
        chunks.append((RAW, start, end))
        position = end
    if position < len(image):
        chunks.append((DONT_CARE, position, len(image)))
    yield HEADER.pack(
        MAGIC, 1, 0, HEADER.size, CHUNK_HEADER.size, block, len(image) // block, len(chunks), 0
    )
    view = memoryview(image)
    for kind, start, end in chunks:
        payload = end - start if kind == RAW else 0
        yield CHUNK_HEADER.pack(kind, 0, (end - start) // block, CHUNK_HEADER.size + payload)
        if payload:
            yield bytes(view[start:end])


# --- CRC-32 over data ranges and zeros ------------------------------------------------

_POLY = 0xEDB88320  # CRC-32 (IEEE 802.3), reflected, as zlib computes it


def _multiply(a: int, b: int) -> int:
    """a·b modulo the CRC polynomial, both reflected (bit 31 is x^0)."""
    product, bit = 0, 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


@functools.cache
def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial, k = 0…63 (made on first use: ~15 ms of pure Python
    that a client sending a sparse image never needs)."""
    table, power = [], 1 << 30  # x^1
    for _ in range(64):
        table.append(power)
        power = _multiply(power, power)
    return table


def crc32_zeros(crc: int, length: int) -> int:
    """``zlib.crc32(bytes(length), crc)`` in O(log length): what zeros append to a CRC."""
    shift, k, bits = 1 << 31, 0, length * 8  # x^0, then x^(8·length)
    while bits:
        if bits & 1:
            shift = _multiply(_powers()[k], shift)
        bits >>= 1
        k += 1
    return _multiply(shift, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def image_crc32(
    path: os.PathLike | str, ranges: Iterable[tuple[int, int]], offsets: Iterable[int]
) -> dict[int, int]:
    """The CRC-32 of the raw image at ``path`` up to each of ``offsets``.

    ``ranges`` ([start, end), in order) are where its data is: only they are
    read; every other byte is zero.
    """
    wanted = sorted(set(offsets))
    found: dict[int, int] = {}
    crc, position = 0, 0
    spans = iter(ranges)
    span = next(spans, None)
    with open(path, "rb") as file:
        for offset in wanted:
            while position < offset:
                while span is not None and span[1] <= position:
                    span = next(spans, None)
                if span is None or span[0] >= offset:
                    crc, position = crc32_zeros(crc, offset - position), offset
                elif span[0] > position:
                    crc, position = crc32_zeros(crc, span[0] - position), span[0]
                else:
                    end = min(span[1], offset, position + CHUNK)
                    crc = zlib.crc32(os.pread(file.fileno(), end - position, position), crc)
                    position = end
            found[offset] = crc
    return found
