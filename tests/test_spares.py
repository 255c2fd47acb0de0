"""Spare workers: started ahead and kept ready, so a worker that goes is replaced at once."""

from __future__ import annotations

import time

import pytest

import safepool
from tests import resource_defs as rd
from tests import tasks


def _settle(pool, count, timeout=20.0):
    """Wait until ``pool`` has ``count`` ready (idle) workers; their pids."""
    deadline = time.monotonic() + timeout
    while True:
        idle = [w.pid for w in pool.stats().workers if w.state == "idle"]
        if len(idle) == count:
            return idle
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} idle workers expected, have {pool.stats().workers}")
        time.sleep(0.02)


def test_the_task_after_a_timeout_runs_on_the_spare_started_before(make_pool):
    pool = make_pool(1, spare_workers=1)
    pool.submit(tasks.pid).result(timeout=30)
    ready = set(_settle(pool, 2))
    with pytest.raises(safepool.TaskTimeoutError):
        pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)
    # No process start between the kill and the next task: it runs on a worker
    # that was already up before the timeout.
    assert pool.submit(tasks.pid).result(timeout=30) in ready


def test_spares_never_run_more_than_max_workers_tasks_at_once(make_pool, tmp_path):
    pool = make_pool(1, spare_workers=2, max_tasks_per_child=2)
    lock = str(tmp_path / "lock")
    pids = [f.result(timeout=60) for f in [pool.submit(tasks.hold_lock, lock, 0.05)
                                           for _ in range(8)]]
    assert len(pids) == 8  # no BlockingIOError: never two at once


@pytest.mark.parametrize("method", ["forkserver"])
def test_by_default_a_recycling_executor_keeps_one_spare(make_pool, fifo):
    pool = make_pool(2, max_tasks_per_child=5)
    busy = [pool.submit(tasks.note_start_then_sleep, fifo.path, i, 2.0) for i in range(2)]
    running = {int(fifo.line().split()[1]) for _ in busy}
    spare = _settle(pool, 1)  # a third process, ready while both run
    assert set(spare).isdisjoint(running)
    assert [f.result(timeout=30) for f in busy] == [0, 1]


@pytest.mark.parametrize("method", ["forkserver"])
def test_by_default_a_plain_executor_gets_a_spare_after_the_first_kill(make_pool):
    pool = make_pool(1)
    pool.submit(tasks.pid).result(timeout=30)
    _settle(pool, 1)
    with pytest.raises(safepool.TaskTimeoutError):
        pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)
    pool.submit(tasks.pid).result(timeout=30)
    assert len(_settle(pool, 2)) == 2


@pytest.mark.parametrize("method", ["forkserver"])
def test_by_default_the_first_task_with_a_timeout_brings_a_spare_before_any_kill(make_pool, fifo):
    """So that even the first timeout's kill does not wait for a process start."""
    pool = make_pool(1)
    pool.submit(tasks.pid).result(timeout=30)
    _settle(pool, 1)
    timed = pool.options(timeout=30).submit(tasks.note_start_then_sleep, fifo.path, 0, 5.0)
    running = int(fifo.line().split()[1])
    spare = _settle(pool, 1)  # a second process, ready while the timed task runs
    assert spare != [running]
    assert timed.result(timeout=30) == 0
    assert len(_settle(pool, 2)) == 2  # no worker was lost, and the spare stays


@pytest.mark.parametrize("method", ["forkserver"])
def test_no_spare_by_default_with_resources(make_pool, tmp_path):
    pool = make_pool(1, resources=[rd.session_resource(str(tmp_path / "log"))],
                     max_tasks_per_child=2)
    for _ in range(3):
        pool.submit(tasks.pid).result(timeout=30)
    with pytest.raises(safepool.TaskTimeoutError):
        pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)
    pool.submit(tasks.pid).result(timeout=30)
    assert len(_settle(pool, 1)) == 1  # connections stay bounded by max_workers


@pytest.mark.parametrize("method", ["forkserver"])
def test_idle_timeout_retires_workers_but_keeps_the_spares(make_pool):
    pool = make_pool(2, spare_workers=1, idle_timeout=0.2)
    list(pool.map(tasks.pid_after, [0.2, 0.2]))
    deadline = time.monotonic() + 20
    while pool.stats().recycled["idle"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats().recycled["idle"] == 2
    assert len(_settle(pool, 1)) == 1


def test_spare_workers_is_checked():
    with pytest.raises(ValueError, match="0 or more"):
        safepool.Executor(1, spare_workers=-1)
    with pytest.raises(TypeError, match="must be an int"):
        safepool.Executor(1, spare_workers=1.5)
