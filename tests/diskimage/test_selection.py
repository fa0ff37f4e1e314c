"""``?ranges=``: whole ranges and blocks of ranges, one parser for every request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskimage import BLOCK
from diskimage.selection import format_part, format_selection, parse_pieces, parse_selection

LENGTHS = [16 << 20, 3 * BLOCK + 100, BLOCK, 5 * BLOCK]


def test_blocks_of_ranges_are_offsets_in_their_range_the_last_block_short():
    pieces = parse_pieces("0/0-1,0/4095,1/3,2,3/1-2", LENGTHS)
    assert pieces == [
        (0, 0, 2 * BLOCK),
        (0, 4095 * BLOCK, 16 << 20),
        (1, 3 * BLOCK, 3 * BLOCK + 100),  # the range's short last block
        (2, 0, BLOCK),
        (3, BLOCK, 3 * BLOCK),
    ]


@pytest.mark.parametrize(
    "spec",
    [
        "0/4096",  # past the range
        "1/4",
        "0/3,0/2",  # out of order
        "0/1-3,0/3",  # overlapping
        "0/0,0",  # a block, then its whole range
        "0,0/0",
        "0/2-1",
        "4/0",  # no such range
        "0/1/2",
        "0/",
        "/1",
        "0/-1",
    ],
)
def test_a_bad_choice_of_blocks_is_refused(spec):
    with pytest.raises(ValueError, match=r"ranges|block"):
        parse_pieces(spec, LENGTHS)


def test_requests_that_take_whole_ranges_refuse_blocks():
    assert parse_selection("0-2,3", 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not blocks"):
        parse_selection("0,1/0", 4)


def test_a_huge_run_is_refused_before_it_is_listed():
    with pytest.raises(ValueError, match="below 4"):
        parse_selection("0-999999999999", 4)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(1, 8)),
        max_size=12,
    )
)
def test_parts_written_by_the_agent_read_back_as_the_same_bytes(raw):
    lengths = [41 * BLOCK - 7, 41 * BLOCK, 41 * BLOCK, 41 * BLOCK]
    wanted: list[tuple[int, int, int]] = []
    for index, first, count in sorted(raw):
        start = first * BLOCK
        end = min(lengths[index], start + count * BLOCK)
        if start >= lengths[index] or (wanted and wanted[-1][0] == index and wanted[-1][2] > start):
            continue
        wanted.append((index, start, end))
    spec = ",".join(format_part(*piece) for piece in wanted)
    assert (parse_pieces(spec, lengths) if spec else []) == wanted


def test_whole_ranges_read_back():
    wanted = [0, 1, 2, 5, 9, 10]
    assert parse_selection(format_selection(wanted), 11) == wanted
    assert parse_pieces(format_selection(wanted), [BLOCK] * 11) == [(i, 0, BLOCK) for i in wanted]
