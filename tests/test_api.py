"""The executor is a drop-in for concurrent.futures.ProcessPoolExecutor."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import multiprocessing
import sys
import time
import weakref

import pytest

import safepool
from tests import tasks


def test_is_a_concurrent_futures_executor():
    assert issubclass(safepool.Executor, cf.Executor)
    assert safepool.ProcessPoolExecutor is safepool.Executor


def test_submit_returns_a_future_with_the_result(make_pool):
    pool = make_pool(2)
    future = pool.submit(tasks.add, 2, b=40)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 42


def test_submit_passes_any_keyword_through_untouched(make_pool):
    pool = make_pool(1)
    future = pool.submit(tasks.echo_kwargs, 1, fn="f", timeout=3, chunksize=9)
    assert future.result(timeout=30) == ((1,), {"fn": "f", "timeout": 3, "chunksize": 9})


def test_submit_after_shutdown_raises_runtime_error(make_pool):
    pool = make_pool(1)
    pool.submit(tasks.add, 1).result(timeout=30)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(tasks.add, 1)


def test_shutdown_before_any_submit_is_clean(method):
    pool = safepool.Executor(1, method)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(tasks.add, 1)


def test_map_returns_an_iterator_of_results_in_order(make_pool):
    pool = make_pool(2)
    results = pool.map(tasks.pid_after, [0.3, 0.0, 0.1])
    assert iter(results) is results
    assert len(list(results)) == 3
    assert list(pool.map(tasks.add, range(20), range(20))) == [2 * i for i in range(20)]


def test_map_timeout_is_an_overall_deadline(make_pool):
    pool = make_pool(1)
    results = pool.map(tasks.pid_after, [0.0, 5.0], timeout=1.0)
    assert isinstance(next(results), int)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_map_raises_a_task_exception_when_its_result_is_reached(make_pool):
    pool = make_pool(2)
    results = pool.map(tasks.raise_value, ["x"], timeout=30)
    with pytest.raises(ValueError, match="x"):
        next(results)
    results = pool.map(tasks.add, [1, 2, "three"], [1, 1, 1])
    assert next(results) == 2
    assert next(results) == 3
    with pytest.raises(TypeError):
        next(results)


def test_map_chunksize_sends_calls_in_batches(make_pool):
    # One task per worker: each chunk runs whole in one worker, which then exits.
    pool = make_pool(2, max_tasks_per_child=1)
    pids = list(pool.map(tasks.pid, range(10), chunksize=5))
    assert len(pids) == 10
    assert pids[:5] == [pids[0]] * 5 and pids[5:] == [pids[5]] * 5
    assert pids[0] != pids[5]
    assert list(pool.map(tasks.add, range(7), range(7), chunksize=3)) == [2 * i for i in range(7)]


def test_shutdown_cancel_futures_cancels_only_pending(make_pool, fifo):
    pool = make_pool(1)
    running = pool.submit(tasks.note_start_then_sleep, fifo.path, "first", 0.5)
    assert fifo.line().startswith("first")
    pending = [pool.submit(tasks.note_start_then_sleep, fifo.path, f"p{i}", 0) for i in range(5)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result() == "first"
    assert all(f.cancelled() for f in pending)
    assert fifo.pending() == ""  # none of the cancelled tasks ever started


def test_with_block_waits_for_the_work(method):
    with safepool.Executor(2, method) as pool:
        futures = [pool.submit(tasks.pid_after, 0.2) for _ in range(4)]
    assert all(f.done() for f in futures)


def test_cancelling_a_running_future_returns_false(make_pool, fifo):
    pool = make_pool(1)
    future = pool.submit(tasks.note_start_then_sleep, fifo.path, "r", 0.5)
    fifo.line()
    assert future.cancel() is False
    assert future.result(timeout=30) == "r"


def test_cancelled_pending_future_never_starts_and_wakes_waiters(make_pool, fifo):
    pool = make_pool(1)
    blocker = pool.submit(tasks.note_start_then_sleep, fifo.path, "blocker", 1.0)
    fifo.line()
    victim = pool.submit(tasks.note_start_then_sleep, fifo.path, "victim", 0)
    assert victim.cancel() is True
    done, _ = cf.wait([victim], timeout=0.5)  # notified at once, not when dispatch gets to it
    assert victim in done
    assert blocker.result(timeout=30) == "blocker"
    assert pool.submit(tasks.add, 1).result(timeout=30) == 1
    assert "victim" not in fifo.pending()


def test_works_with_asyncio_run_in_executor(make_pool):
    pool = make_pool(2)

    async def main():
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(pool, tasks.add, i, 1) for i in range(5)]
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]


def test_works_with_wait_and_as_completed(make_pool):
    pool = make_pool(2)
    futures = [pool.submit(tasks.pid_after, d) for d in (0.4, 0.0)]
    done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED, timeout=30)
    assert futures[1] in done
    completed = list(cf.as_completed(futures, timeout=30))
    assert set(completed) == set(futures)


def test_initializer_runs_once_in_each_worker(make_pool):
    pool = make_pool(2, initializer=tasks.set_state, initargs=("ready",))
    results = [pool.submit(tasks.get_state).result(timeout=30) for _ in range(4)]
    assert {value for value, _ in results} == {"ready"}


def test_failing_initializer_breaks_the_executor_without_hanging(make_pool):
    pool = make_pool(2, initializer=tasks.failing_initializer)
    futures = [pool.submit(tasks.add, i) for i in range(3)]
    for future in futures:
        with pytest.raises(safepool.InitializerError) as info:
            future.result(timeout=30)
        assert "initializer exploded" in str(info.value)
        original = info.value.__cause__
        assert isinstance(original, RuntimeError)  # the initializer's own exception
        assert "in failing_initializer" in str(original.__cause__)  # with its child traceback
    with pytest.raises(cf.process.BrokenProcessPool):
        pool.submit(tasks.add, 1)
    assert "initializer exploded" in pool._broken  # the stdlib's private view, for its tests


def test_the_stdlibs_private_views_read_the_pool(make_pool):
    """CPython's own tests read these ProcessPoolExecutor internals."""
    pool = make_pool(1)
    assert (pool._executor_manager_thread, pool._broken) == (None, False)
    worker = pool.submit(tasks.pid).result(timeout=30)
    assert pool._executor_manager_thread.name == "safepool-manager"
    assert list(pool._processes) == [worker]
    assert (pool._max_workers, pool._mp_context.get_start_method()) == (1, pool.start_method)
    pool.shutdown()
    pool._executor_manager_thread.join(timeout=10)  # it ends right after shutdown() returns
    assert not pool._executor_manager_thread.is_alive()
    assert pool._broken is False  # shut down, not broken


def test_every_future_resolves_exactly_once(make_pool):
    pool = make_pool(3, max_tasks_per_child=7)
    calls: dict[int, int] = {}
    work = [
        (tasks.add, (1, 2)),
        (tasks.raise_value, ("no",)),
        (tasks.segfault, ()),
        (tasks.raise_needs_two_args, ()),
        (tasks.return_unpicklable, ()),
        (tasks.exit_with, (0,)),
    ] * 10
    futures = []
    for i, (fn, args) in enumerate(work):
        future = pool.submit(fn, *args)
        future.add_done_callback(lambda f, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
        futures.append(future)
    cf.wait(futures, timeout=60)
    assert all(f.done() for f in futures)
    pool.shutdown()
    assert calls == {i: 1 for i in range(len(work))}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": -3}, ValueError, "max_workers"),
        ({"max_workers": "2"}, TypeError, "max_workers must be an int"),
        ({"mp_context": "bogus"}, ValueError, "unknown start method 'bogus'"),
        ({"mp_context": 42}, TypeError, "mp_context must be"),
        ({"timeout": -1}, ValueError, "greater than 0"),
        ({"timeout": 0}, ValueError, "greater than 0"),
        ({"timeout": float("nan")}, ValueError, "greater than 0"),
        ({"timeout": "5"}, TypeError, "timeout must be a number"),
        ({"timeout": True}, TypeError, "timeout must be a number"),
        ({"initializer": 3}, TypeError, "initializer must be callable"),
        ({"initargs": [1]}, TypeError, "initargs must be a tuple"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"max_memory_per_child": -1}, ValueError, "max_memory_per_child"),
        ({"initializer": lambda: None}, safepool.PicklingError, "module level"),
    ],
)
def test_bad_constructor_arguments_fail_at_the_call_site(kwargs, error, match):
    with pytest.raises(error, match=match):
        safepool.Executor(**kwargs)


def test_bad_call_arguments_fail_at_the_call_site(make_pool):
    pool = make_pool(1)
    with pytest.raises(TypeError, match="fn must be callable"):
        pool.submit(42)
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(tasks.add, [1], chunksize=0)
    with pytest.raises(TypeError, match="timeout must be a number"):
        pool.map(tasks.add, [1], timeout="soon")
    with pytest.raises(ValueError):
        pool.options(timeout=-2)
    assert pool.submit(tasks.add, 5).result(timeout=30) == 5  # the pool is fine


def test_never_reads_or_sets_the_global_start_method():
    # In a fresh interpreter: after using safepool the global method is still unset.
    code = (
        "import multiprocessing as mp, safepool\n"
        "from tests import tasks\n"
        "if __name__ == '__main__':\n"
        "    with safepool.Executor(1) as p: assert p.submit(tasks.add, 1).result() == 1\n"
        "    assert mp.get_start_method(allow_none=True) is None, mp.get_start_method()\n"
        "    mp.set_start_method('spawn')\n"
        "    print('ok', p.start_method)\n"
    )
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok forkserver"


def test_default_start_method_is_forkserver_on_linux():
    pool = safepool.Executor(1)
    try:
        assert pool.start_method == "forkserver"
        worker_pid = pool.submit(tasks.pid).result(timeout=30)
        import psutil

        parent = psutil.Process(worker_pid).parent()
        assert parent is not None and "forkserver" in " ".join(parent.cmdline())
    finally:
        pool.shutdown()


@pytest.mark.parametrize("context", ["spawn", multiprocessing.get_context("spawn")])
def test_mp_context_may_be_a_name_or_a_context(context):
    with safepool.Executor(1, context) as pool:
        assert pool.start_method == "spawn"
        assert pool.submit(tasks.add, 3).result(timeout=30) == 3


def test_fork_is_honoured_with_a_warning_when_threads_are_alive():
    stop = __import__("threading").Event()
    thread = __import__("threading").Thread(target=stop.wait, name="busy-thread")
    thread.start()
    try:
        with pytest.warns(safepool.ForkWarning, match="busy-thread"):
            pool = safepool.Executor(1, "fork")
    finally:
        stop.set()
        thread.join()
    with pool:
        assert pool.start_method == "fork"
        assert pool.submit(tasks.add, 2).result(timeout=30) == 2


def test_fork_without_other_threads_does_not_warn(recwarn):
    with safepool.Executor(1, "fork") as pool:
        assert pool.submit(tasks.add, 2).result(timeout=30) == 2
    assert not [w for w in recwarn if issubclass(w.category, safepool.ForkWarning)]


def test_workers_start_on_demand(make_pool):
    pool = make_pool(4)
    pool.submit(tasks.add, 1).result(timeout=30)
    from tests.conftest import pool_processes

    assert len(pool_processes()) == 1


def test_many_threads_submitting_at_once(make_pool):
    pool = make_pool(2)
    results: list[list[int]] = []

    def submitter(base):
        futures = [pool.submit(tasks.add, base, i) for i in range(200)]
        results.append([f.result(timeout=60) for f in futures])

    threads = [__import__("threading").Thread(target=submitter, args=(b * 1000,)) for b in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert time.monotonic() - start < 60
    expected = sorted(b * 1000 + i for b in range(4) for i in range(200))
    assert sorted(r for chunk in results for r in chunk) == expected


def test_initargs_may_hold_objects_that_cross_only_at_process_start(method):
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    with safepool.Executor(1, ctx, initializer=tasks.put_in_queue, initargs=(queue,)) as pool:
        worker = pool.submit(tasks.pid).result(timeout=30)
    assert queue.get(timeout=30) == worker
    queue.close()
    queue.join_thread()


def test_the_forkserver_preloads_the_executor_only_when_workers_will_import_it(monkeypatch):
    # Workers re-run a script's main module: one that uses safepool.Executor makes every
    # worker import the executor side, so the forkserver should have it loaded already.
    import types

    from safepool import _context

    monkeypatch.delitem(sys.modules, "safepool._task", raising=False)
    light = types.ModuleType("light_main")
    light.safepool = safepool
    monkeypatch.setitem(sys.modules, "__main__", light)
    assert _context._workers_need_executor() is False
    heavy = types.ModuleType("heavy_main")
    heavy.Executor = safepool.Executor
    monkeypatch.setitem(sys.modules, "__main__", heavy)
    assert _context._workers_need_executor() is True
    # `with safepool.Executor() as pool:` under the main guard: the worker does not
    # re-run it, so the pool in the main module's globals needs no executor there.
    monkeypatch.setitem(sys.modules, "__main__", light)
    with safepool.Executor(1) as pool:
        light.pool = pool
        assert _context._workers_need_executor() is False
    del light.pool
    monkeypatch.setitem(sys.modules, "safepool._task", types.ModuleType("safepool._task"))
    assert _context._workers_need_executor() is True  # @safepool.task modules import it


def test_a_script_that_makes_its_pool_under_the_main_guard_starts_light_workers(tmp_path):
    """The common script: ``import safepool`` at the top, the pool under the guard. Its
    forkserver must not preload the executor side (pebble, asyncio, psutil), which would
    hold back the first worker by the whole import, and its workers do not need it."""
    import os
    import subprocess
    import textwrap

    from tests.conftest import ROOT

    (tmp_path / "light_script.py").write_text(textwrap.dedent("""
        import sys
        import safepool

        def heavy_modules_loaded():
            return sorted(m for m in ("safepool._executor", "pebble", "psutil", "asyncio")
                          if m in sys.modules)

        if __name__ == "__main__":
            with safepool.Executor(1, mp_context="forkserver") as pool:
                print(pool.submit(heavy_modules_loaded).result(timeout=60), flush=True)
    """))
    done = subprocess.run([sys.executable, str(tmp_path / "light_script.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("main_imports_logging", [False, True])
def test_a_forked_worker_finds_what_every_child_imports_already_loaded(tmp_path,
                                                                     main_imports_logging):
    """What multiprocessing's bootstrap imports in each forkserver child (and ``typing``)
    is imported once, in the forkserver: a recycled worker does not import it again;
    ``logging`` too, but only when the main module imports it (so every worker would),
    since otherwise it only holds back the first worker.

    Run with ``-m``: ``runpy.run_module`` imports none of them itself, so the main
    module's top level, re-run in the worker as ``__mp_main__``, sees what it inherited."""
    import os
    import subprocess
    import textwrap

    from safepool._context import CHILD_IMPORTS
    from tests.conftest import ROOT

    expected = [*CHILD_IMPORTS, "logging"] if main_imports_logging else list(CHILD_IMPORTS)
    (tmp_path / "child_imports_main.py").write_text(textwrap.dedent(f"""
        import sys
        INHERITED = [m for m in {(*CHILD_IMPORTS, "logging")!r} if m in sys.modules]
        {"import logging" if main_imports_logging else ""}
        import safepool

        def inherited():
            return sys.modules["__mp_main__"].INHERITED

        if __name__ == "__main__":
            with safepool.Executor(1, mp_context="forkserver", max_tasks_per_child=1) as pool:
                print([pool.submit(inherited).result(timeout=60) for _ in range(2)])
    """))
    done = subprocess.run([sys.executable, "-m", "child_imports_main"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=90,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                                            str(ROOT)])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr([expected] * 2)  # two workers, each


def test_a_process_kept_from_the_processes_view_stays_usable_after_its_worker_is_gone(
    make_pool, fifo, tmp_path
):
    """As with the stdlib (CPython's tests join() such a process after stopping the pool).

    The user's join() races the pool's own reaping of the recycled worker; the
    loser of two waitpid() calls used to report the dead worker alive with no
    exit code (about one round in 60), hence several rounds.
    """
    pool = make_pool(1, max_tasks_per_child=1)
    for round_ in range(8):
        release = tmp_path / f"release{round_}"
        future = pool.submit(tasks.note_start_then_wait_for, fifo.path, "running", str(release))
        pid = int(fifo.line().split()[1])
        kept = pool._processes[pid]  # taken while its task runs
        release.touch()
        assert future.result(timeout=30) == "running"  # and the worker exits: it is recycled
        kept.join(timeout=30)
        assert (kept.is_alive(), kept.exitcode) == (False, 0)
    pool.submit(tasks.note_start_then_sleep, fifo.path, "running", 60)
    pid = int(fifo.line().split()[1])
    worker = pool._processes[pid]
    pool.kill_workers()
    worker.join(timeout=30)
    assert (worker.is_alive(), worker.exitcode) == (False, -9)


def test_a_finished_pool_holds_no_initargs(method):
    """Futures keep their pool alive (for Ctrl-C and stop_task); once it is finished, the
    pool must not keep the application's initargs (a Queue's semaphores) alive with it."""
    marker = tasks.Marker()
    ref = weakref.ref(marker)
    pool = safepool.Executor(1, method, initializer=tasks.set_state, initargs=(marker,))
    future = pool.submit(tasks.add, 1)
    assert future.result(timeout=30) == 1
    pool.shutdown()
    del marker, pool
    gc.collect()
    assert ref() is None
    assert future.done()
