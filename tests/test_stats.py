"""Executor.stats(): per-worker rows and totals, checked against known workloads."""

from __future__ import annotations

import math
import os
import pickle
import threading
import time
from concurrent.futures import wait

import psutil
import pytest

import safepool
from tests import obs_tasks


def totals(stats: safepool.Stats) -> dict[str, int]:
    names = ("submitted", "completed", "failed", "timed_out", "crashed", "stopped", "cancelled",
             "queued", "running")
    return {name: getattr(stats, name) for name in names}


def accounted(stats: safepool.Stats) -> int:
    return (stats.completed + stats.failed + stats.timed_out + stats.crashed + stats.stopped
            + stats.cancelled + stats.queued + stats.running)


def recycled(stats: safepool.Stats) -> dict[str, int]:
    return {reason: n for reason, n in stats.recycled.items() if n}


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_fresh_executor_is_all_zero():
    with safepool.Executor(2) as pool:
        stats = pool.stats()
    assert stats.workers == ()
    assert set(totals(stats).values()) == {0}
    assert set(stats.recycled) == {
        "count", "memory", "poisoned", "crash", "timeout", "idle", "stopped"
    }


def test_recycling_by_count_is_counted(make_pool):
    pool = make_pool(1, max_tasks_per_child=2)
    for n in range(5):
        assert pool.submit(obs_tasks.succeed, n).result(timeout=30) == n
    stats = pool.stats()
    assert totals(stats) | {} == dict(
        submitted=5, completed=5, failed=0, timed_out=0, crashed=0, stopped=0, cancelled=0,
        queued=0, running=0,
    )
    assert recycled(stats) == {"count": 2}


def test_every_outcome_lands_in_its_own_counter(make_pool):
    pool = make_pool(1)
    outcomes = [
        pool.submit(obs_tasks.succeed, 1),
        pool.submit(obs_tasks.fail, "a"),
        pool.submit(obs_tasks.fail, "b"),
        pool.submit(obs_tasks.crash),
        pool.options(timeout=0.5).submit(obs_tasks.hang),
        pool.submit(obs_tasks.poison),
        pool.submit(obs_tasks.succeed, 2),
    ]
    wait(outcomes, timeout=60)
    assert all(f.done() for f in outcomes)
    stats = pool.stats()
    assert totals(stats) == dict(
        submitted=7, completed=3, failed=2, timed_out=1, crashed=1, stopped=0, cancelled=0,
        queued=0, running=0,
    )
    assert recycled(stats) == {"crash": 1, "timeout": 1, "poisoned": 1}


def test_memory_recycling_is_counted(make_pool):
    pool = make_pool(1, max_memory_per_child=60 * 1024 * 1024)
    first = pool.submit(obs_tasks.grow, 100).result(timeout=30)
    second = pool.submit(obs_tasks.succeed, 1).result(timeout=30)
    assert second == 1
    assert recycled(pool.stats()) == {"memory": 1}
    # Its replacement may run before it has finished exiting (no resources: early
    # replacement); it takes no more work meanwhile, and is gone once reaped.
    assert all(w.state == "retiring" for w in pool.stats().workers if w.pid == first)
    deadline = time.monotonic() + 10
    while first in {w.pid for w in pool.stats().workers}:
        assert time.monotonic() < deadline, "the recycled worker was never reaped"
        time.sleep(0.01)


def test_idle_retirement_is_counted(make_pool):
    pool = make_pool(1, idle_timeout=0.2)
    pool.submit(obs_tasks.succeed, 1).result(timeout=30)
    wait_for(lambda: pool.stats().recycled["idle"] == 1)
    wait_for(lambda: pool.stats().workers == ())


def test_queued_running_stopped_and_cancelled(make_pool):
    pool = make_pool(1)
    running = pool.submit(obs_tasks.hang)
    queued = [pool.submit(obs_tasks.succeed, n) for n in range(3)]
    wait_for(running.running)
    stats = pool.stats()
    assert (stats.running, stats.queued, stats.submitted) == (1, 3, 4)
    (worker,) = stats.workers
    assert worker.state == "busy"
    assert queued[0].cancel()
    pool.kill_workers()
    stats = pool.stats()
    assert totals(stats) == dict(
        submitted=4, completed=0, failed=0, timed_out=0, crashed=0, stopped=1, cancelled=3,
        queued=0, running=0,
    )


def test_worker_rows_show_pid_tasks_memory_and_uptime(make_pool):
    pool = make_pool(1)
    pids = {pool.submit(os.getpid).result(timeout=30) for _ in range(3)}
    (pid,) = pids
    first = pool.stats()
    (row,) = first.workers
    assert row.pid == pid
    assert row.tasks == 3
    assert row.state == "idle"
    rss = psutil.Process(pid).memory_info().rss
    assert row.rss is not None and 0.5 * rss < row.rss < 2 * rss
    wait_for(lambda: pool.stats().workers[0].uptime > row.uptime)
    assert row.uptime > 0


def test_sums_hold_under_a_mixed_workload_and_concurrent_readers(make_pool):
    pool = make_pool(2, max_tasks_per_child=3)
    snapshots = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            snapshots.append(pool.stats())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        futures = [pool.submit(obs_tasks.fail_if_odd, n) for n in range(40)]
        wait(futures, timeout=60)
    finally:
        stop.set()
        thread.join()
    stats = pool.stats()
    assert (stats.submitted, stats.completed, stats.failed) == (40, 20, 20)
    assert accounted(stats) == 40
    assert stats.recycled["count"] >= 40 // 3 - 2
    assert snapshots and all(s.submitted <= 40 for s in snapshots)


def test_a_call_that_does_not_pickle_counts_as_submitted_and_failed(make_pool):
    pool = make_pool(1)
    future = pool.submit(obs_tasks.succeed, threading.Lock())
    assert isinstance(future.exception(timeout=0), safepool.PicklingError)
    stats = pool.stats()
    assert (stats.submitted, stats.failed, stats.completed) == (1, 1, 0)
    assert accounted(stats) == 1


def cumulative(histogram: safepool.TaskSeconds) -> dict[float, int]:
    return dict(histogram.buckets)


def test_task_seconds_counts_the_tasks_that_ran_and_replied(make_pool):
    pool = make_pool(1)
    futures = [
        pool.submit(obs_tasks.succeed, 1),
        pool.submit(obs_tasks.fail, "a"),
        pool.submit(obs_tasks.sleep_then, 2, 0.3),
        pool.submit(obs_tasks.crash),
        pool.options(timeout=0.5).submit(obs_tasks.hang),
    ]
    wait(futures, timeout=60)
    stats = pool.stats()
    assert (stats.completed, stats.failed, stats.crashed, stats.timed_out) == (2, 1, 1, 1)
    histogram = stats.task_seconds
    assert histogram.count == stats.completed + stats.failed == 3  # not the crash, the timeout
    bounds = [bound for bound, _ in histogram.buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf
    counts = [n for _, n in histogram.buckets]
    assert counts == sorted(counts) and counts[-1] == histogram.count
    assert cumulative(histogram)[0.25] == 2  # succeed and fail; the sleep took >= 0.3 s
    assert cumulative(histogram)[5.0] == 3
    assert 0.3 <= histogram.sum < 5


def test_task_seconds_is_recorded_before_the_future_resolves(make_pool):
    pool = make_pool(1)
    for n in range(1, 4):
        pool.submit(obs_tasks.succeed, n).result(timeout=30)
        assert pool.stats().task_seconds.count == n


def test_a_bucket_holds_durations_up_to_and_including_its_bound():
    from safepool._stats import TASK_SECONDS_BOUNDS, Counters

    counters = Counters()
    for seconds in (0.0, 0.001, 0.0010001, 1.0, 3600.0, 3600.5, 1e9):
        counters.record_seconds(seconds)
    histogram = counters.task_seconds()
    assert cumulative(histogram)[0.001] == 2
    assert cumulative(histogram)[0.0025] == 3
    assert cumulative(histogram)[1.0] == 4
    assert cumulative(histogram)[3600.0] == 5
    assert cumulative(histogram)[math.inf] == histogram.count == 7
    assert histogram.sum == pytest.approx(1e9 + 7201.5020001)
    assert [b for b, _ in histogram.buckets] == [*TASK_SECONDS_BOUNDS, math.inf]


def test_task_seconds_merge_and_defaults():
    from safepool._stats import Counters, merge_task_seconds

    first, second = Counters(), Counters()
    for seconds in (0.002, 0.2, 20.0):
        first.record_seconds(seconds)
    second.record_seconds(0.2)
    merged = merge_task_seconds([first.task_seconds(), second.task_seconds()])
    assert merged.count == 4 and merged.sum == pytest.approx(20.402)
    assert cumulative(merged)[0.0025] == 1 and cumulative(merged)[0.25] == 3
    assert merge_task_seconds([]) == safepool.TaskSeconds()
    # Stats made without the new field (as before it existed) get an empty histogram.
    stats = safepool.Stats((), 0, 0, 0, 0, 0, 0, 0)
    assert stats.task_seconds.count == 0 and stats.task_seconds.sum == 0.0
    assert all(n == 0 for _, n in stats.task_seconds.buckets)
    # Public as safepool.TaskSeconds: shown and pickled by that name (a cluster's nodes send it).
    assert repr(merged).startswith("TaskSeconds(")
    assert safepool.TaskSeconds.__module__ == "safepool"
    assert pickle.loads(pickle.dumps(merged)) == merged


@pytest.fixture(params=["local", "dask"])
def engine(request):
    return request.param


def test_task_seconds_on_both_engines(engine, request):
    cluster = request.getfixturevalue("dask_client") if engine == "dask" else None
    pool = safepool.Executor(**({"cluster": cluster} if cluster else {"max_workers": 2}))
    try:
        for n in range(3):
            assert pool.submit(obs_tasks.succeed, n).result(timeout=30) == n
        with pytest.raises(ValueError):
            pool.submit(obs_tasks.fail, "x").result(timeout=30)
        with pytest.raises(safepool.TaskTimeoutError):
            pool.options(timeout=0.3).submit(obs_tasks.hang).result(timeout=30)
        stats = pool.stats()
        assert (stats.completed, stats.failed, stats.timed_out) == (3, 1, 1)
        assert stats.task_seconds.count == 4  # merged across the nodes' pools on Dask
        assert cumulative(stats.task_seconds)[0.25] == 4
        assert 0 < stats.task_seconds.sum < 1
    finally:
        pool.kill_workers()
