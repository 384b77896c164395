"""A batch retried after its worker died runs alone in its process: with the threads pool a
crash takes every task of the process, so ordinary batches must not share it."""

import threading
import time

from worker.context import RetryGate


def test_a_retry_waits_for_running_batches_and_keeps_new_ones_out_until_it_is_done() -> None:
    gate = RetryGate()
    events: list[str] = []
    ordinary_running = threading.Event()
    release_ordinary = threading.Event()

    def ordinary(name: str, started: threading.Event | None = None) -> None:
        with gate.shared():
            events.append(f"{name} in")
            if started is not None:
                started.set()
                assert release_ordinary.wait(10)
            events.append(f"{name} out")

    def retry() -> None:
        with gate.alone():
            events.append("retry in")
            time.sleep(0.05)  # a later ordinary batch would slip in here without the gate
            events.append("retry out")

    first = threading.Thread(target=ordinary, args=("first", ordinary_running))
    first.start()
    assert ordinary_running.wait(10)
    retrying = threading.Thread(target=retry)
    retrying.start()
    time.sleep(0.05)  # the retry is waiting for the first batch now
    later = threading.Thread(target=ordinary, args=("later",))
    later.start()
    time.sleep(0.05)
    assert events == ["first in"]  # neither the retry nor the later batch got in
    release_ordinary.set()
    for thread in (first, retrying, later):
        thread.join(10)
    assert events == ["first in", "first out", "retry in", "retry out", "later in", "later out"]


def test_ordinary_batches_share_the_gate() -> None:
    gate = RetryGate()
    both_in = threading.Barrier(2, timeout=10)

    def ordinary() -> None:
        with gate.shared():
            both_in.wait()  # fails with BrokenBarrierError if the second could not enter

    threads = [threading.Thread(target=ordinary) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not both_in.broken
