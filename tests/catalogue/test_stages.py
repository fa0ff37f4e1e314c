"""The threads of a stream's stages (catalogue.stages): hand-off, errors, cancellation, join."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from catalogue.stages import BackgroundHasher, BackgroundWorker, Stages


def test_items_are_worked_on_in_order_on_another_thread():
    seen, threads = [], set()

    def work(item):
        seen.append(item)
        threads.add(threading.current_thread().name)

    worker = BackgroundWorker(work, name="map", depth=2)
    for n in range(100):
        worker.put(n)
    worker.join()
    assert seen == list(range(100))
    assert threads == {"map"}


def test_an_error_stops_the_work_and_is_raised_to_the_producer_every_time():
    seen = []

    def work(item):
        if item == 3:
            raise OSError("disk full")
        seen.append(item)

    worker = BackgroundWorker(work, name="map", depth=1)
    with pytest.raises(OSError, match="disk full"):
        for n in range(1000):
            worker.put(n)
    with pytest.raises(OSError, match="disk full"):
        worker.put(1001)  # a producer that went on anyway gets it again
    with pytest.raises(OSError, match="disk full"):
        worker.join()
    assert seen == [0, 1, 2]  # nothing after the failed item was done


def test_close_stops_the_thread_without_raising():
    def work(item):
        raise ValueError(item)

    worker = BackgroundWorker(work, name="map")
    worker.put(1)
    worker.close()
    worker.close()


# --- A group of stages (catalogue.stages.Stages) ------------------------------------------


def _stage_threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_a_chain_of_stages_hands_every_item_on_in_order_and_ends_upstream_first():
    written = []
    before = _stage_threads()
    with Stages() as stages:
        write = stages.start(written.append, name="write", depth=2)
        double = stages.start(lambda n: write.put(n * 2), name="map", depth=2)
        for n in range(500):
            double.put(n)
    assert written == [n * 2 for n in range(500)]
    assert _stage_threads() == before  # every thread ended


def test_a_stage_that_fails_mid_stream_stops_the_chain_and_the_feeder_gets_its_error():
    written, mapped = [], []
    before = _stage_threads()
    stages = Stages()

    def write(n):
        if n == 40:
            raise OSError("disk full")
        written.append(n)

    def map_(n):
        mapped.append(n)
        writer.put(n)

    writer = stages.start(write, name="write", depth=1)
    mapper = stages.start(map_, name="map", depth=1)
    with pytest.raises(OSError, match="disk full"):
        for n in range(100_000):  # the feeder learns it long before the end
            mapper.put(n)
    with pytest.raises(OSError, match="disk full"):
        stages.join()  # and again at the end
    assert written == list(range(40))  # nothing after the failed item was written
    assert len(mapped) < 100  # nor mapped much past it: the failure stopped the whole chain
    assert _stage_threads() == before


def test_cancelling_mid_stream_drops_what_is_queued_and_never_raises():
    started, release = threading.Event(), threading.Event()
    done = []
    before = _stage_threads()

    def slow(n):
        started.set()
        release.wait(5)
        done.append(n)

    stages = Stages()
    stage = stages.start(slow, name="write", depth=8)
    for n in range(5):
        stage.put(n)
    started.wait(5)
    cancelling = threading.Thread(target=stages.cancel)  # the client went away meanwhile
    cancelling.start()
    while stages.running:
        time.sleep(0.001)
    release.set()
    cancelling.join(5)
    stages.cancel()
    assert done == [0]  # the item under way finished; the queued ones were dropped
    assert _stage_threads() == before
    with pytest.raises(RuntimeError, match="ended"):
        stage.put(6)


def test_leaving_the_block_by_an_exception_cancels_every_stage():
    before = _stage_threads()
    with pytest.raises(ConnectionResetError), Stages() as stages:
        stage = stages.start(lambda n: None, name="map")
        stage.put(1)
        raise ConnectionResetError("client gone")
    assert not stages.running
    assert _stage_threads() == before


def test_a_stage_ended_alone_leaves_the_others_running():
    seen = []
    stages = Stages()
    hasher = BackgroundHasher(stages=stages)
    mapper = stages.start(seen.append, name="map")
    hasher.update(b"abc")
    hasher.close()  # too large to hash now: left to a job
    mapper.put(1)
    stages.join()
    assert seen == [1]


def test_a_hasher_in_a_group_fails_with_it():
    stages = Stages()
    hasher = BackgroundHasher(stages=stages)
    failing = stages.start(lambda item: 1 / 0, name="map")
    failing.put(1)
    with pytest.raises(ZeroDivisionError):
        for _ in range(10_000):
            hasher.update(b"x")
    stages.cancel()


def test_a_hasher_alone_hashes_what_it_was_given():
    hasher = BackgroundHasher(depth=1)
    for piece in (b"a", b"bc", b""):
        hasher.update(piece)
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
