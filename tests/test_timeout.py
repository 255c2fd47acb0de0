"""Per-task timeouts stop the task, its worker and every process it started."""

from __future__ import annotations

import concurrent.futures as cf

import psutil
import pytest

import safepool
from tests import tasks
from tests.conftest import wait_gone


def test_timeout_stops_a_stuck_task_and_names_timeout_and_pid(make_pool, fifo):
    pool = make_pool(1)
    future = pool.options(timeout=0.5).submit(tasks.sleep_forever, fifo.path)
    worker = int(fifo.line().split()[1])
    with pytest.raises(safepool.TaskTimeoutError) as info:
        future.result(timeout=30)
    error = info.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, cf.TimeoutError)
    assert (error.timeout, error.pid) == (0.5, worker)
    assert "0.5s" in str(error) and str(worker) in str(error)
    assert wait_gone([worker]) == []
    # The worker was replaced: the executor keeps working.
    assert pool.submit(tasks.pid).result(timeout=30) != worker


def test_timeout_stops_a_task_spinning_in_a_loop(make_pool):
    pool = make_pool(1, timeout=0.3)
    with pytest.raises(safepool.TaskTimeoutError):
        pool.submit(tasks.spin_forever).result(timeout=30)


def test_a_task_ignoring_sigterm_is_killed_after_the_grace_period(make_pool, fifo):
    pool = make_pool(1, kill_grace=0.2)
    future = pool.options(timeout=0.3).submit(tasks.ignore_sigterm_and_hang, fifo.path)
    worker = int(fifo.line().split()[1])
    with pytest.raises(safepool.TaskTimeoutError):
        future.result(timeout=30)
    assert wait_gone([worker]) == []


def test_timeout_kills_children_grandchildren_and_detached_children(make_pool, fifo):
    pool = make_pool(1)
    future = pool.options(timeout=1.5).submit(tasks.spawn_tree_and_hang, fifo.path)
    pids = [int(p) for p in fifo.line().split()]
    assert all(psutil.pid_exists(p) for p in pids)
    with pytest.raises(safepool.TaskTimeoutError):
        future.result(timeout=30)
    assert wait_gone(pids) == []


def test_the_clock_starts_when_the_task_starts_not_when_queued(make_pool):
    pool = make_pool(1)
    pool.submit(tasks.pid_after, 0.3).result(timeout=30)  # warm the worker
    blocker = pool.submit(tasks.pid_after, 1.5)
    queued = pool.options(timeout=1.0).submit(tasks.pid_after, 0.05)  # waits 1.5 s in the queue
    assert queued.result(timeout=30) == blocker.result(timeout=30)


def test_other_tasks_keep_running_while_one_is_killed(make_pool, fifo):
    pool = make_pool(2)
    survivor = pool.submit(tasks.note_start_then_sleep, fifo.path, "survivor", 1.5)
    survivor_pid = int(fifo.line().split()[1])
    doomed = pool.options(timeout=0.3).submit(tasks.sleep_forever, fifo.path)
    doomed_pid = int(fifo.line().split()[1])
    assert doomed_pid != survivor_pid
    with pytest.raises(safepool.TaskTimeoutError):
        doomed.result(timeout=30)
    assert survivor.result(timeout=30) == "survivor"
    assert psutil.pid_exists(survivor_pid)


def test_timeout_precedence_call_over_task_over_executor(make_pool):
    pool = make_pool(1, timeout=0.3)
    with pytest.raises(safepool.TaskTimeoutError) as info:
        pool.submit(tasks.pid_after, 5).result(timeout=30)
    assert info.value.timeout == 0.3
    # options(timeout=None) switches the executor default off for that call.
    unlimited = pool.options(timeout=None).submit(tasks.pid_after, 0.5)
    assert isinstance(unlimited.result(timeout=30), int)
    with pytest.raises(safepool.TaskTimeoutError) as info:
        pool.options(timeout=0.2).submit(tasks.pid_after, 5).result(timeout=30)
    assert info.value.timeout == 0.2


def test_map_through_options_applies_the_timeout_per_call(make_pool):
    pool = make_pool(2)
    results = pool.options(timeout=0.5).map(tasks.pid_after, [0.0, 5.0])
    assert isinstance(next(results), int)
    with pytest.raises(safepool.TaskTimeoutError):
        next(results)


def test_a_view_does_not_shut_down_its_executor(make_pool):
    pool = make_pool(1)
    with pool.options(timeout=5) as view:
        assert view.submit(tasks.add, 1).result(timeout=30) == 1
    assert pool.submit(tasks.add, 2).result(timeout=30) == 2


def test_a_long_timeout_does_not_keep_finished_tasks_alive(make_pool):
    """A finished task's timeout deadline stays queued until it would fire; it must not
    hold the task's future (and result) for that long, nor pile up without bound."""
    import gc
    import weakref

    pool = make_pool(2, timeout=600)
    futures = [pool.submit(tasks.add, i) for i in range(1500)]
    assert [f.result(timeout=60) for f in futures] == list(range(1500))
    refs = [weakref.ref(f) for f in futures]
    del futures
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
    # Stale deadlines are dropped once they pile up (safepool internals, on purpose).
    assert len(pool._engine._deadlines) <= 1024 + 8 * pool.max_workers + 1
