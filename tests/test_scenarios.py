"""Scenarios from the reliability suite that run in the test process itself: concurrent
shutdown, many submitting threads, done-callbacks that raise or submit, and stopping tasks."""

from __future__ import annotations

import collections
import threading
from concurrent.futures import CancelledError

import pytest

import safepool
from tests import tasks
from tests.conftest import wait_gone


def counting(futures):
    """Attach a done-callback to each future; return the per-future call counter."""
    calls: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def count(future):
        with lock:
            calls[id(future)] += 1

    for future in futures:
        future.add_done_callback(count)
    return calls


def test_shutdown_without_waiting_from_another_thread_while_tasks_run(make_pool, fifo):
    pool = make_pool(2)
    running = [pool.submit(tasks.note_start_then_sleep, fifo.path, f"r{i}", 0.5)
               for i in range(2)]
    queued = [pool.submit(tasks.add, i) for i in range(20)]
    calls = counting(running + queued)
    for _ in range(2):
        fifo.line(timeout=30)  # both workers are busy
    stopper = threading.Thread(target=pool.shutdown, kwargs=dict(wait=False, cancel_futures=True))
    stopper.start()
    stopper.join(timeout=5)
    assert not stopper.is_alive()  # wait=False returns at once
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(tasks.add, 1)
    assert all(f.cancelled() for f in queued)
    # Running tasks finish normally.
    assert [f.result(timeout=30) for f in running] == ["r0", "r1"]
    pool.shutdown(wait=True)
    assert all(calls[id(f)] == 1 for f in running + queued)
    assert pool.stats().cancelled == 20


@pytest.mark.timeout(180)
def test_eight_threads_submitting_a_thousand_tasks_each(make_pool):
    pool = make_pool(2)
    results: dict[int, list[int]] = {}
    futures_of: dict[int, list] = {}
    start = threading.Barrier(8)

    def submitter(base: int) -> None:
        start.wait()
        futures = [pool.submit(tasks.add, base, i) for i in range(1000)]
        futures_of[base] = futures
        results[base] = [f.result(timeout=120) for f in futures]

    threads = [threading.Thread(target=submitter, args=(b * 10_000,)) for b in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not any(t.is_alive() for t in threads)
    for base in range(0, 80_000, 10_000):
        assert results[base] == [base + i for i in range(1000)]
    stats = pool.stats()
    assert (stats.submitted, stats.completed) == (8000, 8000)


def test_a_raising_done_callback_does_not_hurt_the_pool(make_pool, caplog):
    pool = make_pool(1)
    after = []

    def explode(_future):
        raise RuntimeError("callback exploded")

    future = pool.submit(tasks.add, 1, 2)
    future.add_done_callback(explode)
    future.add_done_callback(lambda f: after.append(f.result()))
    assert future.result(timeout=30) == 3
    # The next callback still ran, the error was logged, the pool carries on.
    assert pool.submit(tasks.add, 5).result(timeout=30) == 5
    assert after == [3]
    assert any("callback exploded" in r.getMessage() or (r.exc_info and "callback exploded"
               in str(r.exc_info[1])) for r in caplog.records)


def test_done_callbacks_may_submit_more_work(make_pool):
    pool = make_pool(2)
    finished = threading.Event()
    chain: list[int] = []

    def next_step(future):
        chain.append(future.result())
        if len(chain) < 30:
            pool.submit(tasks.add, future.result(), 1).add_done_callback(next_step)
        else:
            finished.set()

    pool.submit(tasks.add, 0).add_done_callback(next_step)
    assert finished.wait(60)
    assert chain == list(range(30))


def test_cancel_keeps_stdlib_semantics_and_stop_task_stops_a_running_task(make_pool, fifo):
    pool = make_pool(1)
    running = pool.submit(tasks.spawn_tree_and_hang, fifo.path)
    pending = pool.submit(tasks.add, 1)
    tree = [int(p) for p in fifo.line(timeout=30).split()]
    assert running.cancel() is False  # the stdlib's meaning: a running task is not cancelled
    assert running.running()
    assert pool.stop_task(pending) is True  # pending: cancelled, never starts
    assert pending.cancelled()

    assert pool.stop_task(running) is True
    with pytest.raises(safepool.TaskStoppedError, match="stop_task"):
        running.result(timeout=30)
    assert wait_gone(tree, timeout=5) == []  # the worker and the task's processes
    assert pool.submit(tasks.add, 2).result(timeout=30) == 2  # the pool carries on
    assert pool.stop_task(running) is False  # already finished
    stats = pool.stats()
    assert (stats.stopped, stats.cancelled) == (1, 1)
    assert stats.recycled["stopped"] == 1


def test_stop_task_leaves_a_finished_result_alone(make_pool):
    pool = make_pool(1)
    done = pool.submit(tasks.add, 4)
    assert done.result(timeout=30) == 4
    assert pool.stop_task(done) is False
    assert done.result() == 4


def test_stop_task_from_a_done_callback(make_pool, fifo):
    pool = make_pool(2)
    victim = pool.submit(tasks.sleep_forever, fifo.path)
    fifo.line(timeout=30)
    outcome = []
    called = threading.Event()
    trigger = pool.submit(tasks.note_start_then_sleep, fifo.path, "trigger", 0.3)

    def stop_victim(_future):
        outcome.append((threading.current_thread().name, pool.stop_task(victim)))
        called.set()

    # Runs on safepool's own thread when the trigger finishes: it must not deadlock
    # waiting on itself.
    trigger.add_done_callback(stop_victim)
    assert not trigger.done()
    assert called.wait(30)
    assert outcome == [("safepool-manager", True)]
    assert isinstance(victim.exception(timeout=0), safepool.TaskStoppedError)


def test_stop_task_refuses_foreign_futures(make_pool):
    pool = make_pool(1)
    other = make_pool(1)
    future = other.submit(tasks.add, 1)
    with pytest.raises(ValueError, match="returned by this executor"):
        pool.stop_task(future)
    from concurrent.futures import Future

    with pytest.raises(ValueError):
        pool.stop_task(Future())
    assert future.result(timeout=30) == 1


def test_stopped_task_stats_and_no_orphans(make_pool, fifo):
    pool = make_pool(1)
    future = pool.submit(tasks.spawn_tree_and_hang, fifo.path)
    tree = [int(p) for p in fifo.line(timeout=30).split()]
    pool.stop_task(future)
    with pytest.raises((safepool.TaskStoppedError, CancelledError)):
        future.result(timeout=30)
    # Gone, or a zombie (reaped by nobody yet): wait_gone asks each without a race.
    assert wait_gone(tree, timeout=5) == []


def test_work_queued_at_shutdown_is_drained_by_the_same_workers(make_pool):
    pool = make_pool(1)
    futures = [pool.submit(tasks.pid) for _ in range(10)]
    pool.shutdown(wait=True)  # as at the end of a `with` block
    pids = {f.result(timeout=0) for f in futures}
    assert len(pids) == 1  # not one new process per queued task


def test_a_stop_gives_teardown_kill_grace_not_exit_timeout(make_pool, fifo):
    """terminate_workers() (like Ctrl-C) retires idle workers with kill_grace for their
    teardown: a hung teardown is killed then, not after exit_timeout (here 120 s)."""
    from functools import partial

    from tests import resource_defs

    hung = safepool.Resource(
        "hung", tasks.pid, teardown=partial(resource_defs.hanging_teardown, fifo.path)
    )
    pool = make_pool(1, resources=[hung], kill_grace=0.5, exit_timeout=120)
    worker = pool.submit(tasks.pid).result(timeout=30)
    stopper = threading.Thread(target=pool.terminate_workers)
    stopper.start()
    assert fifo.line(timeout=30) == f"teardown {worker}"
    stopper.join(timeout=30)
    assert not stopper.is_alive()  # returned long before exit_timeout
    assert wait_gone([worker], timeout=5) == []
