import threading

import numpy as np
import pytest

from inspector.frames import FrameRing, Reason


def test_ring_preallocates_one_array_and_hands_out_each_slot_once():
    ring = FrameRing(4, 8, 6, 1)
    assert ring.pixels.shape == (4, 8, 6, 1)
    slots = [ring.acquire() for _ in range(4)]
    assert sorted(slots) == [0, 1, 2, 3]
    assert ring.acquire() is None  # full: the caller reports an overload
    assert ring.in_use() == 4
    ring.release(slots[1])
    assert ring.acquire() == slots[1]


def test_slot_view_is_the_ring_memory_not_a_copy():
    ring = FrameRing(2, 4, 4, 3)
    view = ring.view(1)
    view[:] = 7
    assert np.all(ring.pixels[1] == 7) and np.all(ring.pixels[0] == 0)
    assert np.shares_memory(view, ring.pixels)


def test_double_release_is_refused():
    ring = FrameRing(2, 4, 4, 1)
    slot = ring.acquire()
    ring.release(slot)
    with pytest.raises(RuntimeError, match="released twice"):
        ring.release(slot)


def test_ring_is_consistent_under_a_concurrent_producer_and_consumer():
    ring = FrameRing(8, 2, 2, 1)
    handed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def producer():
        for _ in range(20000):
            slot = ring.acquire()
            if slot is not None:
                with lock:
                    handed.append(slot)
        stop.set()

    def consumer():
        while not stop.is_set() or handed:
            with lock:
                slot = handed.pop(0) if handed else None
            if slot is not None:
                ring.release(slot)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert ring.in_use() == 0
    assert sorted(ring.acquire() for _ in range(8)) == list(range(8))


def test_reasons_say_whether_the_frame_was_inspected():
    assert Reason.OK.inspected and Reason.DEFECT.inspected
    assert not any(r.inspected for r in (Reason.OVERLOAD, Reason.TIMEOUT, Reason.ERROR, Reason.BAD_FRAME))
