"""Round trips over random disk layouts: what one end writes, the other reads back exactly.

Layouts are runs of 4 KiB blocks, each data (random bytes, some with zeros
inside) or zeros, with an optional short tail: the shapes a disk image takes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskimage import BLOCK
from diskimage.datamap import DataMap, DataMapper
from diskimage.seekable import FramedZstdEncoder, data_frames, read_seek_table
from diskimage.sparse import SparseImageDecoder, encoded
from diskimage.verify import mismatch
from tests.diskimage.layouts import expected_ranges

zstandard = pytest.importorskip("zstandard")

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# A run: (holds data, blocks), and for data, where inside it a few zero bytes sit.
runs = st.lists(st.tuples(st.booleans(), st.integers(1, 6)), min_size=0, max_size=12)


@st.composite
def images(draw, *, tail: bool = True) -> bytes:
    """A random image: data and zero runs of whole blocks, and maybe a short tail."""
    out = bytearray()
    for is_data, blocks in draw(runs):
        if not is_data:
            out += bytes(blocks * BLOCK)
            continue
        piece = bytearray(draw(st.binary(min_size=16, max_size=16)) * (blocks * BLOCK // 16))
        piece[draw(st.integers(0, len(piece) - 1))] |= 1  # never a block of zeros by chance
        for _ in range(draw(st.integers(0, 3))):  # zeros inside data, across block edges
            at = draw(st.integers(0, len(piece) - 1))
            end = min(len(piece), at + draw(st.integers(1, 3 * BLOCK)))
            piece[at:end] = bytes(end - at)
        out += piece
    if tail:
        out += draw(st.binary(max_size=BLOCK - 1))
    return bytes(out)


def true_ranges(image: bytes) -> list[tuple[int, int]]:
    """The data ranges, the slow and obvious way (small images: never cut at RANGE_MAX)."""
    return [(start, end) for start, end, _ in expected_ranges(image)]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (positions, any order, maybe out of range)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def map_of(image: bytes, cuts: list[int] | None = None) -> DataMap:
    mapper = DataMapper()
    for piece in pieces(image, cuts or []):
        mapper.update(piece)
    return mapper.finish(hashlib.sha256(image).hexdigest())


@SETTINGS
@given(image=images(), cuts=st.lists(st.integers(0, 1 << 20), max_size=8))
def test_the_map_of_a_random_image_is_the_truth_read_from_it(image, cuts):
    datamap = map_of(image, cuts)
    assert [(start, end) for start, end, _ in datamap.ranges] == true_ranges(image)
    for start, end, digest in datamap.ranges:
        assert digest == hashlib.sha256(image[start:end]).hexdigest()
    assert datamap.size == len(image)
    assert DataMap.loads(datamap.dumps()) == datamap


@SETTINGS
@given(image=images(tail=False), cuts=st.lists(st.integers(0, 1 << 20), max_size=8))
def test_a_random_sparse_layout_decodes_to_the_bytes_it_encodes(image, cuts):
    stream = b"".join(encoded(image))
    out = bytearray()
    decoder = SparseImageDecoder(out.extend, lambda length: out.extend(bytes(length)))
    for piece in pieces(stream, cuts):
        decoder.write(piece)
    decoder.finish()
    assert bytes(out) == image
    data = sum(end - start for start, end in true_ranges(image))
    assert len(stream) <= data + 28 + 12 * (2 * len(true_ranges(image)) + 1)


@SETTINGS
@given(image=images())
def test_frames_written_by_a_map_come_back_from_the_seek_table_as_its_ranges(image, tmp_path):
    datamap = map_of(image)
    encoder = FramedZstdEncoder(datamap, level=1)
    path = tmp_path / "image.zst"
    path.write_bytes(encoder.compress(image) + encoder.flush())
    with path.open("rb") as file:
        frames = read_seek_table(file.fileno())
    assert frames is not None
    chosen = data_frames(frames, datamap)
    assert chosen is not None
    assert [(f.start, f.start + f.size) for f in chosen] == [(s, e) for s, e, _ in datamap.ranges]
    stored = path.read_bytes()
    for frame in chosen:
        raw = zstandard.ZstdDecompressor().decompress(
            stored[frame.offset : frame.offset + frame.length]
        )
        assert raw == image[frame.start : frame.start + frame.size]
    whole = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True).read()
    assert whole == image


def written(path: Path, image: bytes) -> Path:
    """``image`` as a sparse file: zero blocks left as holes."""
    with path.open("wb") as file:
        file.truncate(len(image))
        for start, end in true_ranges(image):
            file.seek(start)
            file.write(image[start:end])
    return path


@SETTINGS
@given(image=images(), where=st.integers(0, 1 << 30), flip=st.integers(1, 255))
def test_the_verifier_finds_any_single_changed_byte(image, where, flip, tmp_path):
    if not image:
        return
    datamap = map_of(image)
    path = written(tmp_path / "disk.img", image)
    assert mismatch(path, datamap, workers=2) is None
    assert mismatch(path, datamap, workers=2, fast=True) is None
    at = where % len(image)
    with path.open("r+b") as file:
        file.seek(at)
        file.write(bytes([image[at] ^ flip]))
    assert mismatch(path, datamap, workers=2) is not None
    assert mismatch(path, datamap, workers=2, sparse=False, fast=True) is not None
    os.unlink(path)
