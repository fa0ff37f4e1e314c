"""Downloads ahead of their use (baas_agent.prefetch): order, errors, the memory bound, stop."""

from __future__ import annotations

import threading
import time

import pytest
from baas_agent.prefetch import NotStarted, Prefetch


class Source:
    """Chunks of ``size`` bytes, counting what was taken from it and whether it was closed."""

    def __init__(self, count: int, size: int = 1000, tag: bytes = b"a", fail: bool = False):
        self.count, self.size, self.tag, self.fail = count, size, tag, fail
        self.taken = 0
        self.closed = False

    def __call__(self):
        try:
            for n in range(self.count):
                self.taken += 1
                yield self.tag * (self.size - 1) + bytes([n % 256])
            if self.fail:
                raise OSError("the connection broke")
        finally:
            self.closed = True


def settled(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_each_stream_is_its_sources_chunks_in_order():
    first, second = Source(5, tag=b"a"), Source(3, tag=b"b")
    ahead = Prefetch([first, second])
    try:
        assert b"".join(ahead.stream()) == b"".join(first())
        assert b"".join(ahead.stream()) == b"".join(second())
        with pytest.raises(IndexError):
            ahead.stream()
    finally:
        ahead.close()


def test_the_downloads_run_before_anyone_takes_them_but_hold_at_most_the_budget():
    source = Source(100, size=1000)
    ahead = Prefetch([source], budget=10_000)
    try:
        assert settled(lambda: source.taken >= 11)  # nobody asked: it went ahead
        time.sleep(0.1)
        assert source.taken <= 11, "it read past its budget (and one chunk)"
        got = b"".join(ahead.stream())
        assert len(got) == 100_000 and source.taken == 100
    finally:
        ahead.close()


def test_what_a_source_raised_is_raised_where_its_stream_is_taken():
    ahead = Prefetch([Source(2, fail=True)])
    try:
        stream = ahead.stream()
        assert len(next(stream)) == 1000 and len(next(stream)) == 1000
        with pytest.raises(OSError, match="the connection broke"):
            next(stream)
    finally:
        ahead.close()


def test_closed_it_stops_reading_and_closes_its_source():
    source = Source(1000)
    ahead = Prefetch([source], budget=5000)
    assert settled(lambda: source.taken >= 5)
    ahead.close()
    assert settled(lambda: source.closed), "the source (a connection) was left open"
    assert source.taken <= 7


def test_nothing_is_downloaded_until_before_allows_it_and_nothing_when_it_refuses():
    allowed = threading.Event()
    source = Source(3)

    def before() -> bool:
        allowed.wait(5)
        return True

    ahead = Prefetch([source], before=before)
    try:
        time.sleep(0.1)
        assert source.taken == 0
        allowed.set()
        assert len(b"".join(ahead.stream())) == 3000
    finally:
        ahead.close()
    refused, other = Prefetch([source := Source(3)], before=lambda: False), source
    try:
        with pytest.raises(NotStarted):
            next(refused.stream())
        assert other.taken == 0
    finally:
        refused.close()
