"""Disk images as bytes: the formats BAAS reads and writes, with no web framework.

The server (``catalogue``), the agent that flashes machines (``baas_agent``,
which ships this package in its wheel and in the management OS) and the
benchmarks share one implementation of each format, so a change to one is a
change to all and both ends of the wire always agree:

- :mod:`diskimage.holes`: which bytes are zeros, in memory and in files
  (``SEEK_DATA``/``SEEK_HOLE``);
- :mod:`diskimage.datamap`: the data map (format, mapper), and
  :mod:`diskimage.verify`, a disk checked against one, read by
  :mod:`diskimage.medium` from the page cache where it holds the bytes, else
  from the medium (``O_DIRECT``);
- :mod:`diskimage.zstdframes`: zstd's frame structure walked without decoding;
- :mod:`diskimage.seekable`: zstd files in frames of a data map, with a seek table;
- :mod:`diskimage.sparse`: Android sparse images;
- :mod:`diskimage.zstdblocks`: zstd decoded block by block, zeros as holes;
  :mod:`diskimage.zstdlib`, libzstd's block-level API it drives, and
  :mod:`diskimage.zstdlayout`, the frame format as it reads it;
- :mod:`diskimage.decoders`: bounded streaming decoders of an upload's encoding.
- :mod:`diskimage.gpt`: GUID partition tables: a setup's layout planned on a disk,
  written and read back.

Only the standard library is needed to import any of them; ``zstandard`` and
``blake3`` are used where present (the agent may run without them).

The constants below are the units every module agrees on.
"""

BLOCK = 4096  # the unit of holes and data maps: page and ext4 block size
CHUNK = 1 << 20  # the most handed on at once by a decoder or writer
READ_CHUNK = 4 << 20  # sequential reads from a disk or file
ZERO_BLOCK = bytes(BLOCK)
ZERO_CHUNK = bytes(CHUNK)
ZEROS = memoryview(ZERO_CHUNK)  # read-only zeros, to hash or write a hole without allocating


class DecodeError(ValueError):
    """The bytes are not valid in the encoding they claim."""


class TruncatedError(DecodeError):
    """The bytes end in the middle of what their encoding says comes next."""
