"""Finding zeros: in bytes, by 4 KiB blocks; in files, by asking for their holes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskimage import BLOCK, CHUNK
from diskimage.holes import (
    ShortRead,
    data_extents,
    data_runs,
    is_zeros,
    read_pieces,
    zero_block_runs,
    zero_pieces,
)

MiB = 1 << 20


def test_zero_detection_finds_the_aligned_zero_blocks():
    data = os.urandom(BLOCK)
    assert data_runs(bytes(MiB)) == []
    assert data_runs(os.urandom(MiB)) == [(0, MiB)]
    chunk = data + bytes(2 * BLOCK) + data + bytes(BLOCK)
    assert data_runs(chunk) == [(0, BLOCK), (3 * BLOCK, 4 * BLOCK)]
    # 4 KiB of zeros straddling two blocks is not a zero block.
    straddling = data[:100] + bytes(BLOCK) + data[: BLOCK - 100]
    assert data_runs(straddling) == [(0, 2 * BLOCK)]
    # A short final block is a hole only when it is all zeros.
    assert data_runs(data + bytes(100)) == [(0, BLOCK)]
    assert data_runs(bytes(BLOCK) + data[:100]) == [(BLOCK, BLOCK + 100)]


def test_zero_block_runs_count_blocks_from_where_they_are_told():
    data = b"x" * 100 + bytes(2 * BLOCK) + b"y" * (BLOCK - 100)
    assert list(zero_block_runs(data, 100, 100 + 3 * BLOCK)) == [(100, 100 + 2 * BLOCK)]
    assert list(zero_block_runs(data, 0, 3 * BLOCK)) == [(BLOCK, 2 * BLOCK)]


# A block: zeros, zeros but one byte (zeros straddling its edges), or varied bytes.
BLOCKS = st.one_of(
    st.just(0),
    st.integers(1, BLOCK),  # where its one non-zero byte is, counted from 1
    st.just(-1),
)


def _block(kind: int) -> bytes:
    if kind > 0:
        return bytes(kind - 1) + b"\x01" + bytes(BLOCK - kind)
    return bytes(BLOCK) if kind == 0 else bytes(range(256)) * (BLOCK // 256)


@given(head=st.integers(0, BLOCK - 1), kinds=st.lists(BLOCKS, max_size=300))
def test_zero_block_runs_are_exactly_the_runs_of_all_zero_blocks(head, kinds):
    """Against the plain definition, block by block, wherever the blocks start and however
    long the piece (past one CHUNK too, where the all-zero shortcut does not apply)."""
    data = b"\x02" * head + b"".join(_block(kind) for kind in kinds)
    expected: list[tuple[int, int]] = []
    for number, kind in enumerate(kinds):
        at = head + number * BLOCK
        if kind == 0:
            if expected and expected[-1][1] == at:
                expected[-1] = (expected[-1][0], at + BLOCK)
            else:
                expected.append((at, at + BLOCK))
    assert list(zero_block_runs(data, head, len(data))) == expected
    assert list(zero_block_runs(bytearray(data), head, len(data))) == expected


def test_zeros_of_any_length_are_zeros_and_one_byte_is_not():
    assert is_zeros(bytes(3 * CHUNK + 5)) and is_zeros(b"")
    assert not is_zeros(bytes(2 * CHUNK) + b"\x01")
    assert b"".join(zero_pieces(CHUNK + 3)) == bytes(CHUNK + 3)


def test_a_sparse_file_shows_its_data_and_not_its_holes(tmp_path):
    path = tmp_path / "sparse.img"
    with path.open("wb") as file:
        file.truncate(8 * MiB)
        file.seek(MiB + 10)
        file.write(b"data")
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, 0, 8 * MiB, align=BLOCK))
        assert extents and all(start % BLOCK == 0 and end % BLOCK == 0 for start, end in extents)
        assert any(start <= MiB + 10 < end for start, end in extents)
        assert sum(end - start for start, end in extents) < 8 * MiB  # holes were seen
        assert list(data_extents(fd, 4 * MiB, 8 * MiB)) == []
        with pytest.raises(ShortRead):
            list(read_pieces(fd, 8 * MiB - 10, 8 * MiB + 10, memoryview(bytearray(64))))
    finally:
        os.close(fd)
