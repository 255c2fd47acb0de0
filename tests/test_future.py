"""``SafeFuture`` without a Condition until something needs one.

A future only started, resolved and read once done never makes its
``threading.Condition``; one that a thread waits on, that ``wait`` or
``as_completed`` watches, or that gets a callback makes it on first use. Every
hand-over between the thread resolving futures and threads waiting on them must
still wake the waiter, whichever makes the Condition first.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from safepool._future import SafeFuture

ROUNDS = 2000


def test_a_future_nobody_waits_on_has_no_condition():
    future: SafeFuture[int] = SafeFuture()
    assert future.start()
    future.set_result(7)
    assert future._cond is None
    assert future.result() == 7
    assert future._cond is None


def test_waiting_threads_are_woken_whichever_side_comes_first():
    """A thread blocks in result() (making the Condition) while another resolves the
    futures, racing it for every one of them: no wake-up is ever lost."""
    futures: list[SafeFuture[int]] = [SafeFuture() for _ in range(ROUNDS)]
    got: list[int] = []

    def read() -> None:
        got.extend(f.result(timeout=30) for f in futures)

    reader = threading.Thread(target=read)
    reader.start()
    for i, future in enumerate(futures):
        assert future.start()
        future.set_result(i)
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert got == list(range(ROUNDS))


def test_wait_and_as_completed_see_futures_resolved_while_they_watch():
    futures: list[SafeFuture[int]] = [SafeFuture() for _ in range(200)]
    resolving = threading.Event()

    def resolve() -> None:
        resolving.wait(timeout=30)
        for i, future in enumerate(futures):
            future.start()
            future.set_result(i)

    thread = threading.Thread(target=resolve)
    thread.start()
    seen = []
    resolving.set()
    for future in cf.as_completed(futures, timeout=30):
        seen.append(future.result())
    done, not_done = cf.wait(futures, timeout=30)
    thread.join(timeout=30)
    assert sorted(seen) == list(range(200))
    assert len(done) == 200 and not not_done


def test_callbacks_run_once_whether_added_before_or_after_the_result():
    calls: list[str] = []
    future: SafeFuture[int] = SafeFuture()
    future.add_done_callback(lambda f: calls.append(f"before {f.result()}"))
    future.start()
    future.set_result(1)
    future.add_done_callback(lambda f: calls.append(f"after {f.result()}"))
    assert calls == ["before 1", "after 1"]


def test_a_second_result_is_refused_as_the_stdlib_refuses_it():
    future: SafeFuture[int] = SafeFuture()
    future.set_result(1)
    with pytest.raises(cf.InvalidStateError, match=r"^FINISHED: <SafeFuture at .* state=finished"):
        future.set_result(2)
    assert future.result() == 1


def test_a_cancelled_future_never_starts_and_wakes_its_waiters():
    future: SafeFuture[int] = SafeFuture()
    waiter = threading.Thread(target=lambda: cf.wait([future], timeout=30))
    waiter.start()
    assert future.cancel()
    assert not future.start()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert future.cancelled() and future.done()


def test_it_has_every_attribute_a_stdlib_future_has():
    """``SafeFuture.__init__`` does ``Future.__init__``'s work itself, but for the
    Condition and the lists, made on first use: a field a new Python adds there must be
    added here too, with the same starting value."""
    stdlib, ours = cf.Future(), SafeFuture()
    for name, value in vars(stdlib).items():
        if name == "_condition":
            assert isinstance(ours._condition, threading.Condition)
        else:
            assert getattr(ours, name) == value, name
    made_later = {"_condition", "_waiters", "_done_callbacks"}
    assert not made_later & set(vars(SafeFuture()))


def test_the_lists_made_on_first_use_are_each_futures_own():
    first, second = SafeFuture(), SafeFuture()
    assert first._waiters is first._waiters
    assert first._waiters is not second._waiters
    assert first._done_callbacks is not second._done_callbacks
    first._done_callbacks.append(print)
    assert second._done_callbacks == []


def test_cancel_racing_start_never_breaks_either_side():
    """start() (the manager) and cancel() (a caller) at the same moment, many times:
    start() says whether the task may run, and never raises."""
    for _ in range(ROUNDS):
        future: SafeFuture[int] = SafeFuture()
        started: list[bool] = []
        go = threading.Barrier(2)

        def start(f: SafeFuture[int], go: threading.Barrier, started: list[bool]) -> None:
            go.wait(timeout=10)
            started.append(f.start())

        thread = threading.Thread(target=start, args=(future, go, started))
        thread.start()
        go.wait(timeout=10)
        cancelled = future.cancel()
        thread.join(timeout=10)
        assert started == [not cancelled]
        assert future.cancelled() == cancelled


def test_a_finalizer_cancelling_a_future_during_a_state_change_does_not_deadlock():
    """Each future has its own reentrant lock: a cancel() run by a finalizer while this
    thread holds some future's lock (a garbage collection can run anywhere) proceeds."""
    other: SafeFuture[int] = SafeFuture()
    future: SafeFuture[int] = SafeFuture()
    with future._state_lock:  # as during start()/set_result()
        assert other.cancel()
        assert future.cancel()  # the same thread: reentrant
    assert other.cancelled() and future.cancelled()
