"""The follower that feeds a completing resumable upload's receiver behind its appends."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from catalogue.services.uploads import follow
from catalogue.services.uploads.follow import Follower
from diskimage import CHUNK

pieces = st.lists(
    st.tuples(
        st.integers(1, 3 * CHUNK // 2),  # length
        st.sampled_from(["data", "zeros"]),  # zeros are seeked over, as ResumablePart does
        st.booleans(),  # handed over in memory too
    ),
    max_size=12,
)


def append_all(tmp_path, prefix: bytes, plan, sink_delay: float = 0.0):
    """Append ``plan``'s pieces after ``prefix`` to a file while a follower feeds a sink."""
    path = tmp_path / "part"
    path.write_bytes(prefix)
    fed = bytearray()
    slow = threading.Event()

    def sink(data: bytes) -> None:
        if sink_delay:
            slow.wait(sink_delay)  # a receiver slower than the socket
        fed.extend(data)

    expected = bytearray(prefix)
    with open(path, "r+b", buffering=0) as out, open(path, "rb") as source:
        out.seek(len(prefix))
        follower = Follower(source, sink, name="test-follower")
        try:
            follower.advance(len(prefix))
            for length, kind, handed in plan:
                data = os.urandom(length) if kind == "data" else bytes(length)
                if kind == "data":
                    out.write(data)
                else:
                    out.seek(length, os.SEEK_CUR)
                expected += data
                follower.advance(len(expected), data if handed else None)
            follower.finish(len(expected))
        finally:
            follower.stop()
    return bytes(fed), bytes(expected)


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.integers(0, 3 * CHUNK),
    plan=pieces,
    queue=st.sampled_from([0, CHUNK, 32 * CHUNK]),
    slow=st.booleans(),
)
def test_the_receiver_gets_exactly_the_bytes_appended_in_order(tmp_path, prefix, plan, queue, slow):
    """Whatever was there before, whichever pieces are handed over in memory or must be read
    back (the queue full, or none), and zeros seeked over at the end of the file."""
    original = follow.QUEUE_BYTES
    follow.QUEUE_BYTES = queue
    try:
        fed, expected = append_all(tmp_path, os.urandom(prefix), plan, 0.003 if slow else 0.0)
    finally:
        follow.QUEUE_BYTES = original
    assert fed == expected


def test_a_follower_behind_the_appends_catches_up_before_finish_returns(tmp_path):
    plan = [(CHUNK, "data", False), (CHUNK, "zeros", True), (CHUNK + 5, "data", True)] * 3
    plan += [(CHUNK, "zeros", False), (100, "data", False)]
    fed, expected = append_all(tmp_path, os.urandom(2 * CHUNK + 7), plan, sink_delay=0.01)
    assert fed == expected


def test_an_error_of_the_receiver_comes_back_to_the_appender_and_stops_the_thread(tmp_path):
    path = tmp_path / "part"
    path.write_bytes(os.urandom(4 * CHUNK))

    class Refused(Exception):
        pass

    calls = []

    def sink(data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 2:  # on the thread
            raise Refused("not an image")

    with open(path, "rb") as source:
        follower = Follower(source, sink, name="test-follower")
        follower.advance(4 * CHUNK)
        with pytest.raises(Refused):
            follower.finish(4 * CHUNK)
        follower.stop()
        with pytest.raises(Refused):
            follower.advance(4 * CHUNK)
    assert calls == [CHUNK, CHUNK]
