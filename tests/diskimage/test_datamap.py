"""The data mapper: the ranges of an image's data, whatever pieces it comes in."""

from __future__ import annotations

import pytest
from blake3 import blake3

from diskimage import BLOCK
from diskimage.datamap import DataMapper
from tests.diskimage.layouts import MiB, disk_image, expected_ranges


@pytest.mark.parametrize(
    "pieces",
    [
        [b"x" * 100, 10_000, b"y"],  # a hole that starts and ends inside blocks
        [BLOCK, b"z" * (BLOCK + 1), 3 * BLOCK - 1, b"w" * 7, 5],  # holes on and off boundaries
        [b"a" * BLOCK, 1, b"b"],  # one zero byte between data: all one block of data
    ],
)
def test_a_hole_maps_as_its_zeros_would_wherever_it_falls(pieces):
    """Zeros told as a length (a decoder's hole) map exactly like zero bytes fed."""
    skipping, feeding = DataMapper(), DataMapper()
    for piece in pieces:
        if isinstance(piece, int):
            skipping.skip(piece)
            feeding.update(bytes(piece))
        else:
            skipping.update(piece)
            feeding.update(piece)
    assert skipping.finish("") == feeding.finish("")


@pytest.mark.parametrize("step", [4095, 4097, MiB + 12, 3 * MiB - 28])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_pieces_that_do_not_start_on_a_block_map_the_same(step, kind):
    """A sparse upload's pieces start anywhere in a block (after a chunk header): the map,
    and the data handed on for writing, are those of the image, whatever the cuts."""
    data = disk_image()
    image = bytearray(len(data))

    def write(piece: memoryview, offset: int) -> None:
        image[offset : offset + len(piece)] = piece

    mapper = DataMapper(on_data=write)
    for start in range(0, len(data), step):
        mapper.update(kind(data[start : start + step]))
    mapped = mapper.finish("")
    assert [list(r) for r in mapped.ranges] == expected_ranges(data)
    assert list(mapped.blake3) == [blake3(data[s:e]).hexdigest() for s, e, _ in mapped.ranges]
    assert bytes(image) == data
