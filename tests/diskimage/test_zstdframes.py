"""zstd's frame structure followed without decoding: where frames end, whether a stream is whole."""

from __future__ import annotations

import pytest
import zstandard

from diskimage import DecodeError, TruncatedError
from diskimage.zstdframes import ZstdFrameWalker, zstd_frames

SKIPPABLE = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"


def test_a_skippable_frame_is_a_whole_frame():
    walker = ZstdFrameWalker()
    walker.feed(SKIPPABLE + zstandard.ZstdCompressor().compress(b"data"))
    assert walker.complete
    assert walker.frames == 2


def test_a_stream_cut_inside_a_frame_is_truncated():
    walker = ZstdFrameWalker()
    walker.feed(zstandard.ZstdCompressor(write_checksum=True).compress(b"data" * 1000)[:-1])
    assert not walker.complete
    with pytest.raises(TruncatedError, match="middle of a frame"):
        walker.finish()


def test_bytes_that_are_no_frame_are_refused():
    with pytest.raises(DecodeError, match="not zstd"):
        ZstdFrameWalker().feed(b"\0" * 16)


def test_frames_are_split_whatever_the_pieces_they_arrive_in():
    frames = [zstandard.ZstdCompressor().compress(bytes([n]) * 5000 * n) for n in range(1, 5)]
    stream = SKIPPABLE + b"".join(frames)
    for size in (1, 7, 4096, len(stream)):
        pieces = [stream[at : at + size] for at in range(0, len(stream), size)]
        assert list(zstd_frames(pieces)) == [SKIPPABLE, *frames]


def test_content_sizes_are_announced_and_an_unsized_frame_is_noticed():
    sizes: list[int] = []
    walker = ZstdFrameWalker(sizes.append)
    walker.feed(zstandard.ZstdCompressor().compress(bytes(300)))
    assert sizes == [300] and not walker.unknown
    unsized = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    walker.feed(unsized.compress(b"x" * 10) + unsized.flush())
    assert walker.unknown and walker.complete
