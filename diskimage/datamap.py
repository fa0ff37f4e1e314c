"""A version's data map: where its non-zero bytes are, with a SHA-256 per range.

A raw disk image is mostly zeros (a 6 GiB disk holding a few hundred MiB of
files). The map lists the ranges that hold data — 4 KiB blocks that are not
all zeros, merged, and cut every ``RANGE_MAX`` bytes — each with the SHA-256
of its bytes (and its BLAKE3, a check as safe and ten times faster, for
agents asking whether a disk still holds the image); every byte outside them
is zero. Like a bmap file, it lets the agent write, verify and compare only
the data: a disk holds the version exactly when every range hashes right and
everything else reads as zeros (:mod:`diskimage.verify`), and the ranges hash
in parallel, where the whole-image SHA-256 is one long sequential pass over
the zeros too.

The server builds the map from the raw bytes as they stream by
(:class:`DataMapper`), at upload, and stores it beside the version. It
carries the version's size and whole-image SHA-256, so a map never describes
other bytes than the version it is served for; the agent accepts a map only
for the image its instruction names (:meth:`DataMap.from_json`, the wire
format of docs/agent-protocol.md §5).

A large upload's map is taken with the BLAKE3 of each range only: its
SHA-256s (a range's, and the whole image's) are computed with the version's
digest by a background job, which rewrites the map. Until then both are
null, and the map is not handed to agents.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from diskimage import BLOCK
from diskimage.holes import is_zeros, zero_block_runs

try:
    import blake3 as blake3_module
except ImportError:  # pragma: no cover - an agent without it checks by SHA-256
    blake3_module = None  # type: ignore[assignment]

RANGE_MAX = 16 << 20  # a range is cut here, so big files hash in parallel
FORMAT = "baas-datamap/1"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DataMap:
    size: int
    sha256: str
    ranges: tuple[tuple[int, int, str], ...]  # [start, end) and the SHA-256 of those bytes
    # The BLAKE3 of each range too: as safe a check, ten times faster to compute,
    # for agents that only need to know whether a disk still holds the image.
    blake3: tuple[str, ...] | None = None
    # A large zstd upload's frame checksums, still to be checked by the job that reads
    # the version back: [start, end) of the raw bytes each covers, and the low 32 bits
    # of their XXH64, as the frame carried it. Gone from the map once checked.
    zstd_checksums: tuple[tuple[int, int, int], ...] | None = None

    @property
    def data_bytes(self) -> int:
        return sum(end - start for start, end, _ in self.ranges)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "block_size": BLOCK,
            "size": self.size,
            "sha256": self.sha256 or None,  # None: a job computes it (a large upload)
            "data_bytes": self.data_bytes,
            "ranges": [[start, end, digest or None] for start, end, digest in self.ranges],
            **({"blake3": list(self.blake3)} if self.blake3 is not None else {}),
            **(
                {"zstd_checksums": [[s, e, f"{v:08x}"] for s, e, v in self.zstd_checksums]}
                if self.zstd_checksums
                else {}
            ),
        }

    def dumps(self) -> bytes:
        return json.dumps(self.as_json(), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> DataMap:
        """Parse a stored map. Raises ValueError if it is not one."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a BAAS data map")
        ranges = tuple((int(s), int(e), str(h or "")) for s, e, h in data["ranges"])
        fast = data.get("blake3")
        if fast is not None and len(fast) != len(ranges):
            raise ValueError("the map's BLAKE3 list does not match its ranges")
        return cls(
            size=int(data["size"]),
            sha256=str(data["sha256"] or ""),
            ranges=ranges,
            blake3=tuple(str(h) for h in fast) if fast is not None else None,
            zstd_checksums=tuple(
                (int(s), int(e), int(v, 16)) for s, e, v in data.get("zstd_checksums") or ()
            )
            or None,
        )

    @classmethod
    def from_json(cls, data: Any, *, size: int, sha256: str) -> DataMap:
        """Validate a map from the server for the image of ``size`` bytes and ``sha256``.

        Accepts only a well-formed map of exactly that image, else ValueError.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} map")
        if data.get("size") != size or data.get("sha256") != sha256:
            raise ValueError("the map describes other bytes than the instruction's image")
        if data.get("block_size") != BLOCK:
            raise ValueError(f"unsupported block size {data.get('block_size')!r}")
        checked = _ranges(data.get("ranges"), size)
        fast = data.get("blake3")
        if fast is not None and (
            not isinstance(fast, list)
            or len(fast) != len(checked)
            or not all(isinstance(h, str) and SHA256_HEX.fullmatch(h) for h in fast)
        ):
            raise ValueError("the map's BLAKE3 list does not match its ranges")
        return cls(
            size=size,
            sha256=sha256,
            ranges=tuple(checked),
            blake3=tuple(fast) if fast is not None else None,
        )

    def can_check_fast(self) -> bool:
        """Whether ranges can be checked by BLAKE3 (the map has it, and so does this host)."""
        return self.blake3 is not None and blake3_module is not None

    def gaps(self) -> Iterator[tuple[int, int]]:
        """The ``[start, end)`` runs between ranges: zeros in the image."""
        position = 0
        for start, end, _ in self.ranges:
            if start > position:
                yield position, start
            position = end
        if position < self.size:
            yield position, self.size

    def segments(self) -> Iterator[tuple[int, int, bool]]:
        """``(start, end, holds data)`` covering the whole image, in order."""
        position = 0
        for start, end, _ in self.ranges:
            if start > position:
                yield position, start, False
            yield start, end, True
            position = end
        if position < self.size:
            yield position, self.size, False


def _ranges(ranges: Any, size: int) -> list[tuple[int, int, str]]:
    """The map's ranges, checked: sorted, apart, inside the image, on blocks, with SHA-256s."""
    if not isinstance(ranges, list):
        raise ValueError("the map has no list of ranges")
    checked: list[tuple[int, int, str]] = []
    previous_end = 0
    for item in ranges:
        if not (isinstance(item, list) and len(item) == 3):
            raise ValueError(f"a range is [start, end, sha256], not {item!r}")
        start, end, digest = item
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(digest, str)):
            raise ValueError(f"a range is [start, end, sha256], not {item!r}")
        if start < previous_end or end <= start or end > size or start % BLOCK:
            raise ValueError(f"the range {start}-{end} is out of order or out of the image")
        if not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"the range {start}-{end} has no SHA-256")
        checked.append((start, end, digest))
        previous_end = end
    return checked


class DataMapper:
    """Builds the data map of a raw image fed in order with :meth:`update`.

    Blocks are 4 KiB from the image's start, whatever the sizes of the pieces
    fed; a short last block is data unless it is all zeros. :meth:`skip` takes
    a run known to be zeros (a hole of a sparse file) without looking at it.

    ``on_data(piece, offset)``, if given, receives every piece of data found,
    in order, with its offset in the image: a sparse writer needs no scan of
    its own. The last piece may only come with :meth:`finish`.
    """

    def __init__(
        self, on_data: Callable[[memoryview, int], None] | None = None, *, sha256: bool = True
    ) -> None:
        self._on_data = on_data
        self._sha256 = sha256  # False: BLAKE3 only (the SHA-256s come later)
        self.size = 0  # bytes fed
        self._carry = b""  # the start of a block not complete yet
        self._ranges: list[tuple[int, int, str]] = []
        self._fast: list[str] = []  # the BLAKE3 of each finished range
        self._open: tuple[int, Any, Any] | None = None  # start, SHA-256, BLAKE3 of the open range
        self._end = 0  # where the open range ends

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, memoryview):  # searched in place when it is a whole object
            data = _whole(data) or bytes(data)
        length = len(data)
        if not length:
            return
        offset = self.size - len(self._carry)  # the image offset of the carry's first byte
        self.size += length
        start = 0  # where the first whole block of ``data`` begins
        if self._carry:
            start = BLOCK - len(self._carry)
            self._carry += bytes(data[:start])
            if len(self._carry) < BLOCK:
                return
            self._scan(self._carry, 0, BLOCK, offset)
            offset += BLOCK
            self._carry = b""
        end = start + (length - start) // BLOCK * BLOCK
        if end > start:
            self._scan(data, start, end, offset)
        self._carry = bytes(data[end:])

    def skip(self, length: int) -> None:
        """``length`` zero bytes (a hole), not looked at but where they share a block with data."""
        if self._carry:  # the block in progress is finished with zeros
            head = min(length, BLOCK - len(self._carry))
            self.update(bytes(head))
            length -= head
        if length <= 0:
            return
        whole = length // BLOCK * BLOCK
        self.size += whole
        if length > whole:
            self.update(bytes(length - whole))

    def finish(self, sha256: str) -> DataMap:
        """The map, given the whole image's SHA-256 (computed alongside)."""
        if self._carry and not is_zeros(self._carry):
            self._data(memoryview(self._carry), self.size - len(self._carry))
        self._carry = b""
        self._close()
        fast = tuple(self._fast) if blake3_module is not None else None
        return DataMap(size=self.size, sha256=sha256, ranges=tuple(self._ranges), blake3=fast)

    def state(self) -> dict[str, Any]:
        """Where the map is, as plain values (JSON), for :meth:`restore`. The hashes of the
        open range are not in it: :meth:`restore` is given that range's bytes again."""
        return {
            "size": self.size,
            "carry": self._carry.hex(),
            "ranges": [list(item) for item in self._ranges],
            "blake3": list(self._fast),
            "open": None if self._open is None else [self._open[0], self._end],
        }

    def restore(self, state: dict[str, Any], read: Callable[[int, int], Iterator[bytes]]) -> None:
        """Go on from where :meth:`state` was taken; ``read(start, end)`` gives the bytes of
        the image between those offsets (the open range's, hashed again; none are handed to
        ``on_data``)."""
        self.size, self._carry = int(state["size"]), bytes.fromhex(state["carry"])
        self._ranges = [
            (int(start), int(end), str(digest)) for start, end, digest in state["ranges"]
        ]
        self._fast = [str(digest) for digest in state["blake3"]]
        self._open = None
        if state["open"] is not None:
            start, end = (int(value) for value in state["open"])
            self._open = (
                start,
                hashlib.sha256() if self._sha256 else None,
                blake3_module.blake3() if blake3_module is not None else None,
            )
            for piece in read(start, end):
                for digest in self._open[1:]:
                    if digest is not None:
                        digest.update(piece)
            self._end = end

    def _scan(self, data: bytes | bytearray, start: int, end: int, offset: int) -> None:
        """Map the whole blocks of ``data[start:end]``, at ``offset`` in the image: data
        runs are hashed into ranges, zero blocks end them. The piece is searched where
        it lies, never copied (a piece that does not start on a block of the image is
        the common case of a sparse upload)."""
        view = memoryview(data)
        position = start
        for hole, zeros in zero_block_runs(data, start, end):
            if hole > position:
                self._data(view[position:hole], offset + position - start)
            self._close()
            position = zeros
        if position < end:
            self._data(view[position:end], offset + position - start)

    def _data(self, view: memoryview, offset: int) -> None:
        while view:
            if self._open is None or self._end != offset or self._end - self._open[0] >= RANGE_MAX:
                self._close()
                self._open = (
                    offset,
                    hashlib.sha256() if self._sha256 else None,
                    blake3_module.blake3() if blake3_module is not None else None,
                )
                self._end = offset
            room = RANGE_MAX - (self._end - self._open[0])
            piece = view[:room]
            if self._open[1] is not None:
                self._open[1].update(piece)
            if self._open[2] is not None:
                self._open[2].update(piece)
            if self._on_data is not None:
                self._on_data(piece, offset)
            self._end += len(piece)
            offset += len(piece)
            view = view[len(piece) :]

    def _close(self) -> None:
        if self._open is not None:
            start, digest, fast = self._open
            self._ranges.append((start, self._end, digest.hexdigest() if digest else ""))
            if fast is not None:
                self._fast.append(fast.hexdigest())
            self._open = None


def _whole(view: memoryview) -> bytes | None:
    """The bytes object ``view`` covers all of (so it can be searched in place), if it does."""
    obj = view.obj
    return obj if isinstance(obj, bytes) and len(obj) == view.nbytes else None


def empty_map(size: int, sha256: str) -> DataMap:
    """The map of ``size`` zero bytes."""
    return DataMap(size=size, sha256=sha256, ranges=(), blake3=())
