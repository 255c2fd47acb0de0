"""One suite, two engines: the same tasks, resources and timeouts on this machine and on Dask.

Each test runs once with the local engine and once with ``cluster=`` a real
two-worker ``LocalCluster`` on 127.0.0.1 (one thread, so one pool process, per
Dask worker). What a user can observe must be the same on both: results,
errors and their types, timeouts that kill the task's process tree, crash
isolation, resources with their hooks and teardown, stop_task, cancellation,
stats and the futures' protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import io
import os
import threading

import pytest

import safepool
from tests import resource_defs as rd
from tests import tasks
from tests.conftest import wait_gone

ENGINES = ["local", "dask"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def make(engine, request):
    """Build executors on the parametrized engine; stop them all afterwards."""
    cluster = request.getfixturevalue("dask_client") if engine == "dask" else None
    made = []

    def build(**kwargs):
        if cluster is None:
            kwargs.setdefault("max_workers", 2)
        pool = safepool.Executor(cluster=cluster, **kwargs)
        made.append(pool)
        return pool

    yield build
    for pool in made:
        pool.kill_workers()


@pytest.fixture(scope="module", autouse=True)
def _tqdm_lock_made():
    """tqdm makes its process-wide lock (a named semaphore) on first use: before the leak check."""
    from safepool import _progress

    if _progress._tqdm_module is not None:
        _progress.ProgressBar(1, file=io.StringIO()).close()


def setup_that_fails():
    raise ConnectionRefusedError("database is down")


@pytest.fixture
def logfile(tmp_path):
    return str(tmp_path / "events.log")


def test_submit_map_and_child_tracebacks(make):
    pool = make()
    assert pool.submit(tasks.add, 2, b=3).result(timeout=30) == 5
    assert list(pool.map(tasks.add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
    future = pool.submit(tasks.raise_value, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        future.result(timeout=30)
    assert isinstance(info.value.__cause__, safepool.RemoteTraceback)
    assert "raise_value" in info.value.__cause__.traceback
    pool.shutdown()


def test_the_futures_work_with_wait_as_completed_and_asyncio(make):
    pool = make()
    futures = [pool.submit(tasks.add, i) for i in range(4)]
    done, _ = cf.wait(futures, timeout=30)
    assert len(done) == 4
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [0, 1, 2, 3]

    async def main():
        return await asyncio.wrap_future(pool.submit(tasks.add, 40, 2))

    assert asyncio.run(main()) == 42
    pool.shutdown()


def test_timeout_stops_the_task_and_its_whole_process_tree(make, fifo):
    pool = make()
    future = pool.options(timeout=1.0).submit(tasks.spawn_tree_and_hang, fifo.path)
    pids = [int(p) for p in fifo.line().split()]
    with pytest.raises(safepool.TaskTimeoutError) as info:
        future.result(timeout=30)
    assert info.value.pid == pids[0]
    assert wait_gone(pids) == []
    assert pool.submit(tasks.add, 1, 1).result(timeout=30) == 2  # the pool carries on
    pool.shutdown()


@pytest.mark.parametrize("kind", ["segfault", "os._exit"])
def test_a_crash_fails_only_its_own_future(make, kind, engine, request):
    pool = make()
    if engine == "dask":
        client = request.getfixturevalue("dask_client")
        dask_workers = client.run(os.getpid)
    slow = pool.submit(tasks.pid_after, 0.5)
    crash = pool.submit(tasks.segfault) if kind == "segfault" else pool.submit(tasks.exit_with, 3)
    with pytest.raises(safepool.WorkerCrashedError) as info:
        crash.result(timeout=30)
    assert info.value.exitcode == (-11 if kind == "segfault" else 3)
    assert isinstance(slow.result(timeout=30), int)
    assert pool.submit(tasks.add, 1).result(timeout=30) == 1
    if engine == "dask":
        assert client.run(os.getpid) == dask_workers  # no Dask worker was restarted
    pool.shutdown()


def test_resources_set_up_reset_around_tasks_and_torn_down_at_shutdown(make, logfile):
    pool = make(resources=[rd.session_resource(logfile)], max_tasks_per_child=3)
    results = [pool.submit(rd.use, "db").result(timeout=30) for _ in range(4)]
    assert {name for name, _ in results} == {"db"}
    pool.shutdown()
    kinds = [line[0] for line in rd.read_log(logfile)]
    assert kinds.count("before") == kinds.count("after") == 4
    # Recycled after 3 tasks (one teardown), the rest at shutdown: every setup torn down.
    assert kinds.count("setup") == kinds.count("teardown") >= 2


def test_a_failing_resource_setup_gives_resource_setup_error(make, logfile):
    broken = safepool.Resource("db", setup_that_fails)
    pool = make(resources=[broken], setup_backoff_max=0.2)
    with pytest.raises(safepool.ResourceSetupError) as info:
        pool.submit(tasks.add, 1).result(timeout=30)
    assert info.value.resource == "db"
    assert "database is down" in str(info.value.__cause__)
    pool.kill_workers()


def test_an_unpicklable_argument_fails_its_future_with_the_path(make):
    pool = make()
    future = pool.submit(tasks.add, threading.Lock())
    with pytest.raises(safepool.PicklingError, match=r"args\[0\]"):
        future.result(timeout=30)
    assert pool.submit(tasks.add, 1).result(timeout=30) == 1
    pool.shutdown()


def test_stop_task_stops_a_running_task_and_its_tree(make, fifo):
    pool = make()
    future = pool.submit(tasks.spawn_tree_and_hang, fifo.path)
    pids = [int(p) for p in fifo.line().split()]
    assert pool.stop_task(future) is True
    with pytest.raises(safepool.TaskStoppedError):
        future.result(timeout=30)
    assert wait_gone(pids) == []
    assert pool.stop_task(future) is False  # finished: its outcome stands
    assert pool.stats().stopped == 1
    assert pool.submit(tasks.add, 2).result(timeout=30) == 2
    pool.shutdown()


def test_cancelling_an_awaited_run_stops_the_call_and_its_tree(make, fifo):
    pool = make()

    async def main():
        call = asyncio.ensure_future(pool.run(tasks.spawn_tree_and_hang, fifo.path))
        pids = [int(p) for p in (await asyncio.to_thread(fifo.line)).split()]
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return pids, [r async for r in pool.map_async(tasks.add, range(4))]

    pids, results = asyncio.run(main())
    assert wait_gone(pids) == []
    assert results == [0, 1, 2, 3]
    assert pool.stats().stopped == 1
    pool.shutdown()


def test_cancel_and_shutdown_cancel_futures_only_cancel_what_has_not_started(make, fifo):
    pool = make()
    # Two pool processes in all: both busy, then more calls that cannot start yet.
    running = [pool.submit(tasks.note_start_then_sleep, fifo.path, i, 1.5) for i in range(2)]
    for _ in running:
        fifo.line()
    waiting = [pool.submit(tasks.add, i) for i in range(4)]
    assert not any(f.cancel() for f in running)  # started: cancel() is False, as in the stdlib
    assert waiting[0].cancel() is True
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    assert all(not f.cancelled() and f.exception() is None for f in running)
    stats = pool.stats()
    assert stats.cancelled == 4 and stats.completed == 2


def test_stats_count_every_outcome(make):
    pool = make()
    pool.submit(tasks.add, 1).result(timeout=30)
    with pytest.raises(ValueError):
        pool.submit(tasks.raise_value, "x").result(timeout=30)
    with pytest.raises(safepool.TaskTimeoutError):
        pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)
    pool.submit(tasks.add, 2).result(timeout=30)  # a worker to show, after the timeout's
    stats = pool.stats()
    assert (stats.submitted, stats.completed, stats.failed, stats.timed_out) == (4, 2, 1, 1)
    assert stats.stopped == 0
    assert stats.recycled["timeout"] == 1
    assert stats.workers and all(w.pid > 0 for w in stats.workers)
    pool.shutdown()


def test_task_decorator_and_progress_bars(make, capsys):
    pool = make()
    decorated = safepool.task(timeout=10, executor=pool)(tasks.add)
    assert decorated(20, 22).result(timeout=30) == 42
    assert list(pool.map(tasks.add, range(3), progress="adding")) == [0, 1, 2]
    pool.shutdown()


def test_recycling_by_task_count(make):
    pool = make(max_tasks_per_child=2)
    pids = [pool.submit(tasks.pid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) >= 3  # no process ran more than two tasks
    assert all(pids.count(p) <= 2 for p in pids)
    pool.shutdown()


def test_big_bytes_arguments_arrive_whole_and_as_bytes(make):
    import zlib

    pool = make()
    big = bytes(range(256)) * 4096  # 1 MiB: sent out of band, by reference
    arrived = pool.submit(tasks.describe_buffers, big, b"x", bytearray(big), k=big)
    one = ("bytes", len(big), zlib.crc32(big))
    assert arrived.result(timeout=60) == (
        [one, ("bytes", 1, zlib.crc32(b"x")), ("bytearray", len(big), zlib.crc32(big))],
        {"k": one},
    )
    echoed = pool.submit(tasks.add, big, b"").result(timeout=60)
    assert echoed == big and type(echoed) is bytes
    with pytest.raises(safepool.PicklingError, match=r"args\[1\]"):
        pool.submit(tasks.add, big, threading.Lock()).result(timeout=30)
    pool.shutdown()
