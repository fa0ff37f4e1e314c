"""The threads of a stream's stages (catalogue.stages): hand-off, errors, cancellation, join."""

from __future__ import annotations

import threading

import pytest

from catalogue.stages import BackgroundWorker


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
