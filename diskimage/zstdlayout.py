"""The zstd frame format (RFC 8878), as far as the block decoder (:mod:`diskimage.zstdblocks`)
reads it itself: frame and block headers, what is known of the frame being decoded,
and runs of zero blocks found in the compressed bytes.
"""

from __future__ import annotations

import functools
import re

BLOCK_MAX = 128 << 10
CONTENT_SIZE_UNKNOWN = (1 << 64) - 1  # ZSTD_CONTENTSIZE_UNKNOWN
MAGIC = b"\x28\xb5\x2f\xfd"
SINGLE_SEGMENT = 0x20  # in a frame header's descriptor
RLE = 1  # block type in a block header


class Frame:
    """What is known of the frame being decoded."""

    def __init__(self, start: int = 0, prefix: bytes = b""):
        self.start = start  # its first raw byte
        self.prefix = prefix  # the header's first bytes, until the rest comes
        self.content_size = CONTENT_SIZE_UNKNOWN
        self.checksum = False
        self.window = 0
        self.block_max = BLOCK_MAX
        self.wraps = True
        self.drops = False
        self.block: tuple[bytes, bool, int, int] = (b"", False, 0, 0)
        self.zero_blocks = zero_blocks(BLOCK_MAX)
        self.held: list[bytes] = []  # zero blocks not given to libzstd yet, while few
        self.held_bytes = 0  # the zeros since the last block given to libzstd


@functools.cache
def zero_blocks(size: int) -> re.Pattern[bytes]:
    """Matches a run of zstd RLE blocks of ``size`` zero bytes, not the last of their frame."""
    block = ((size << 3) | (RLE << 1)).to_bytes(3, "little") + b"\0"
    return re.compile(b"(?:%s)+" % re.escape(block))


def header_size(descriptor: int) -> int:
    """A zstd frame header's size in bytes, magic included, from its descriptor."""
    single_segment = descriptor & SINGLE_SEGMENT
    dictionary = (0, 1, 2, 4)[descriptor & 3]
    content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    return 4 + 1 + (0 if single_segment else 1) + dictionary + content_size


def without_content_size(header: bytes) -> bytes:
    """The same frame header (with a window descriptor) but without its content size."""
    descriptor = header[4]
    dictionary = (0, 1, 2, 4)[descriptor & 3]
    return header[:4] + bytes([descriptor & 0x3F]) + header[5 : 6 + dictionary]
