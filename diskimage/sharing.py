"""Which ranges of a new version may hold the same bytes as an older version's file.

Two versions of an image usually differ in a few ranges of their data maps
(:mod:`diskimage.datamap`). This module compares the maps — and for zstd
files their seek tables (:mod:`diskimage.seekable`) — and lists the ranges of
the new file that may equal ranges of the older one, as
:class:`~diskimage.extents.Candidate` s for :func:`~diskimage.extents.dedupe_candidates`,
which has the kernel compare the bytes before it shares any. A candidate is a
guess, never trusted: a wrong one costs a comparison.

- **raw**: a range with the same length and SHA-256 as an older range (at any
  offset: a file that moved) is shared whole; a range that changed is compared
  with the older bytes at the same offset piece by piece (1 MiB, then 64 KiB),
  so a few changed blocks do not unshare their whole 16 MiB range;
- **zstd**: a range's frame is one run of whole blocks in both files (frames are
  aligned, see :mod:`diskimage.seekable`); an unchanged range's frame is the
  same bytes, shared whole; a changed range's frame is equal up to about where
  its bytes changed, so its start is tried too.
"""

from __future__ import annotations

from diskimage import BLOCK
from diskimage.datamap import DataMap
from diskimage.extents import Candidate
from diskimage.seekable import Frame


def raw_candidates(old: DataMap, new: DataMap) -> list[Candidate]:
    """Candidates for a raw file of ``new`` against a raw file of ``old``."""
    by_content = {(end - start, digest): start for start, end, digest in old.ranges if digest}
    old_ranges = [(start, end) for start, end, _ in old.ranges]
    candidates: list[Candidate] = []
    cursor = 0  # the first old range that may overlap the next new range
    for start, end, digest in new.ranges:
        source = by_content.get((end - start, digest)) if digest else None
        if source is not None:
            candidates.append(Candidate(source, start, end - start, "whole"))
            continue
        while cursor < len(old_ranges) and old_ranges[cursor][1] <= start:
            cursor += 1
        index = cursor
        while index < len(old_ranges) and old_ranges[index][0] < end:
            low, high = max(start, old_ranges[index][0]), min(end, old_ranges[index][1])
            if high > low:
                candidates.append(Candidate(low, low, high - low, "pieces"))
            index += 1
    return candidates


def zstd_candidates(
    old: DataMap, old_frames: list[Frame], new: DataMap, new_frames: list[Frame]
) -> list[Candidate]:
    """Candidates for a zstd file in frames of ``new`` against one in frames of ``old``:
    only frames that begin on a block in both files (files written before frames were
    aligned share nothing)."""
    old_spans = _frame_spans(old, old_frames)
    new_spans = _frame_spans(new, new_frames)
    by_content = {(key[1] - key[0], key[2]): span for key, span in old_spans.items()}
    by_place = {(key[0], key[1]): span for key, span in old_spans.items()}
    candidates = []
    for (start, end, digest), (offset, length) in new_spans.items():
        source = by_content.get((end - start, digest)) or by_place.get((start, end))
        if source is None or source[0] % BLOCK or offset % BLOCK:
            continue
        size = min(length, source[1])
        size -= size % BLOCK if size != length or size != source[1] else 0
        if size:
            candidates.append(Candidate(source[0], offset, size, "prefix"))
    return candidates


def _frame_spans(datamap: DataMap, frames: list[Frame]) -> dict[tuple[int, int, str], tuple]:
    """``(start, end, sha256)`` of each range → ``(offset, length)`` of the bytes its frame
    holds alone in the file: the frame and the padding after it, to the next block."""
    spans = {}
    ranges = {start: (start, end, digest) for start, end, digest in datamap.ranges}
    for index, frame in enumerate(frames):
        key = ranges.get(frame.start)
        if not frame.size or key is None or frame.size != key[1] - key[0]:
            continue
        end = frame.offset + frame.length
        following = frames[index + 1] if index + 1 < len(frames) else None
        if following is not None and not following.size and following.offset == end:
            end += following.length  # the padding after it (never part of another range)
        spans[key] = (frame.offset, end - frame.offset)
    return spans
