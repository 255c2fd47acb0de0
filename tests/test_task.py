"""@safepool.task: calls return futures and the function pickles under spawn and forkserver."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

import pytest

import safepool
from tests import mod_a, mod_b, tasks
from tests.conftest import ROOT, SCRIPTS


def test_calling_returns_a_future_on_the_given_executor(make_pool):
    pool = make_pool(1)
    work = safepool.task(executor=pool)(tasks.pid)
    future = work()
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == pool.submit(tasks.pid).result(timeout=30)
    assert work.__wrapped__ is tasks.pid
    assert work.__name__ == "pid" and work.__module__ == "tests.tasks"


def test_same_named_functions_in_two_modules_never_collide(make_pool):
    pool = make_pool(2)
    assert pool.submit(mod_a.work, 1).result(timeout=30) == ("mod_a", 1)
    assert pool.submit(mod_b.work, 2).result(timeout=30) == ("mod_b", 2)
    assert list(pool.map(mod_b.work, [3])) == [("mod_b", 3)]


def test_a_decorated_function_runs_on_the_stdlib_executor_too():
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        assert pool.submit(mod_a.work, 5).result(timeout=60) == ("mod_a", 5)


def test_decorator_timeout_applies_on_any_safepool_executor(make_pool):
    pool = make_pool(1)
    slow = safepool.task(timeout=0.3, executor=pool)(tasks.pid_after)
    with pytest.raises(safepool.TaskTimeoutError):
        slow(5).result(timeout=30)
    with pytest.raises(safepool.TaskTimeoutError):
        pool.submit(slow, 5).result(timeout=30)


def test_decorating_a_nested_function_is_refused():
    def inner():
        return 1

    with pytest.raises(ValueError, match="module-level"):
        safepool.task(inner)
    with pytest.raises(TypeError, match="callable"):
        safepool.task(42)
    with pytest.raises(ValueError):
        safepool.task(timeout=-1)
    with pytest.raises(TypeError, match="executor"):
        safepool.task(executor="pool")


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_decorated_functions_in_a_main_script(method, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.txt"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "main_task.py"), method, str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["9 16 [25, 36]", "49 forkserver"]
    assert out.read_text() == "written at exit"  # the default executor finished at exit
