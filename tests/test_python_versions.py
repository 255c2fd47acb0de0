"""What Python 3.14 and 3.15 change for a process pool, and what safepool does about it.

Each test runs on every supported version: safepool gives the newer behaviour
everywhere. The ones that need a 3.15 feature to exist skip before 3.15.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

import safepool
from tests import tasks
from tests.conftest import wait_gone

needs_315 = pytest.mark.skipif(sys.version_info < (3, 15), reason="a Python 3.15 feature")


def _run_python(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter (global multiprocessing state stays there)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# ------------------------------------------------------- 3.14: terminate_workers/kill_workers


@pytest.mark.parametrize("stop", ["terminate_workers", "kill_workers"])
def test_stopping_the_workers_fails_running_futures_with_broken_process_pool(
    make_pool, fifo, stop
):
    pool = make_pool(1, kill_grace=0.2)
    running = pool.submit(tasks.spawn_tree_and_hang, fifo.path)
    tree = [int(pid) for pid in fifo.line().split()]  # the worker and what the task started
    queued = pool.submit(tasks.add, 1)
    getattr(pool, stop)()
    # It returned once the worker had exited and been reaped (the stdlib's returns at
    # once); what the task started was signalled too, and dies with it.
    assert not psutil.pid_exists(tree[0])
    assert wait_gone(tree[1:]) == []
    error = running.exception(timeout=0)
    assert isinstance(error, BrokenProcessPool), repr(error)  # what 3.14's stdlib raises
    assert isinstance(error, safepool.PoolStoppedError)
    assert isinstance(error, safepool.TaskStoppedError)  # what safepool raised before
    assert f"{stop}() was called" in str(error)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(tasks.add, 1)


def test_stop_task_is_not_a_broken_pool(make_pool, fifo):
    """Only a stop of the whole executor is a BrokenProcessPool; the pool goes on."""
    pool = make_pool(1)
    future = pool.submit(tasks.note_start_then_sleep, fifo.path, "victim", 60)
    fifo.line()
    assert pool.stop_task(future)
    error = future.exception(timeout=30)
    assert type(error) is safepool.TaskStoppedError
    assert not isinstance(error, BrokenProcessPool)
    assert pool.submit(tasks.add, 2).result(timeout=30) == 2


# -------------------------------------------------- 3.15: the crash's cause names the process


@pytest.mark.parametrize(
    ("task", "arg", "ending"),
    [
        (tasks.exit_with, 99, "terminated abruptly with exit code 99"),
        (tasks.segfault, None, "terminated abruptly with exit code -11 (SIGSEGV)"),
    ],
)
def test_a_crash_cause_names_the_pid_and_exit_code(make_pool, task, arg, ending):
    pool = make_pool(1)
    future = pool.submit(task, arg) if arg is not None else pool.submit(task)
    with pytest.raises(BrokenProcessPool) as info:
        future.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, cf.process._RemoteTraceback)  # as CPython 3.15's own test checks
    assert f"Process {info.value.pid} {ending}" in cause.tb
    assert pool.submit(tasks.add, 3).result(timeout=30) == 3  # and only that task failed


# ------------------------------------------ 3.14: spawn when no temp directory is writable


def test_the_default_falls_back_to_spawn_without_a_writable_temp_directory():
    out = _run_python("""
        import tempfile
        import safepool
        tempfile.tempdir = "/proc/self"  # nothing can be created there, not even by root
        with safepool.Executor(1) as pool:
            print(pool.start_method, pool.submit(abs, -4).result(timeout=60))
    """)
    assert out.split() == ["spawn", "4"]


def test_the_default_is_forkserver_with_a_writable_temp_directory():
    with safepool.Executor(1) as pool:
        assert pool.start_method == "forkserver"


# ------------------------------------------------ 3.15: asyncio reads futures by snapshot


def test_a_failure_awaited_through_asyncio_is_not_reported_as_unretrieved(make_pool, caplog):
    pool = make_pool(1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match="awaited"):
            await loop.run_in_executor(pool, tasks.raise_value, "awaited")
        with pytest.raises(ValueError, match="wrapped"):
            await asyncio.wrap_future(pool.submit(tasks.raise_value, "wrapped"))

    with caplog.at_level(logging.ERROR, logger="safepool"):
        asyncio.run(main())
        import gc

        gc.collect()
        from safepool import _future

        _future.report_unretrieved()
    assert "never retrieved" not in caplog.text


@needs_315
def test_get_snapshot_counts_as_retrieval(make_pool):
    pool = make_pool(1)
    future = pool.submit(tasks.raise_value, "snap")
    cf.wait([future], timeout=30)
    done, cancelled, _, exception = future._get_snapshot()
    assert (done, cancelled, str(exception)) == (True, False, "snap")
    assert future._retrieved


# ----------------------------------------- 3.15: set_forkserver_preload(..., on_error=)


@needs_315
def test_the_forkserver_preload_keeps_the_applications_on_error():
    out = _run_python("""
        import multiprocessing
        from multiprocessing import forkserver
        import safepool
        multiprocessing.set_forkserver_preload(["json"], on_error="warn")
        with safepool.Executor(1) as pool:
            pool.submit(abs, -1).result(timeout=60)
        server = forkserver._forkserver
        print(server._preload_on_error, *server._preload_modules)
    """)
    on_error, *modules = out.split()
    assert on_error == "warn"
    assert modules[0] == "json" and "safepool._worker" in modules


# ------------------------------------------------------- 3.15: lazy imports (PEP 810)


@needs_315
def test_a_lazy_import_in_the_main_module_stays_lazy():
    script = textwrap.dedent("""
        lazy import wave
        import sys
        import safepool
        if __name__ == "__main__":
            with safepool.Executor(1) as pool:
                pool.submit(abs, -1).result(timeout=60)
            print("wave" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def test_workers_are_gone_after_the_fallback_pool(tmp_path):
    """The spawn fallback leaves nothing behind either (fresh interpreter: no shared state)."""
    out = _run_python("""
        import tempfile
        import safepool
        tempfile.tempdir = "/proc/self"
        pool = safepool.Executor(2)
        pids = {pool.submit(__import__("os").getpid).result(timeout=60) for _ in range(4)}
        pool.shutdown()
        print(*pids)
    """)
    assert wait_gone([int(p) for p in out.split()]) == []
