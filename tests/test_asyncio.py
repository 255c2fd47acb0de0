"""safepool in asyncio services: awaitable calls whose cancellation stops the work.

Every test runs on asyncio's own loop and on uvloop, with real worker
processes; a stopped task is checked with psutil (its worker is gone) and by a
marker file it would have written later (it never appears).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import gc
import subprocess
import sys
from pathlib import Path

import pytest

import safepool
from tests import aio_tasks, tasks
from tests.conftest import wait_gone
from tests.services import importorskip

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session", autouse=True)
def _warm_uvloop():
    """uvloop's first loop opens two fds it keeps for good: open them before any test counts."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.run(asyncio.sleep(0))


@pytest.fixture(params=["asyncio", "uvloop"])
def arun(request):
    """Run a coroutine to completion on a fresh event loop of the parametrized kind."""
    if request.param == "uvloop":
        return importorskip("uvloop").run
    return asyncio.run


async def started_pid(fifo) -> int:
    """Wait, off the loop, for a task's "started <pid>" line."""
    line = await asyncio.to_thread(fifo.line)
    assert line.startswith("started "), line
    return int(line.split()[1])


def assert_stopped(pid: int, marker: Path) -> None:
    """The task's worker is gone, so the marker it would have written can never appear."""
    assert wait_gone([pid], timeout=10) == []
    assert not marker.exists()


# --------------------------------------------------------------------------- run


def test_run_returns_the_result_and_raises_the_tasks_exception(arun):
    async def main():
        async with safepool.Executor(2) as pool:
            assert await pool.run(tasks.add, 2, b=3) == 5
            with pytest.raises(ValueError, match="boom") as info:
                await pool.run(tasks.raise_value, "boom")
            assert "raise_value" in str(info.value.__cause__)  # the child traceback
            with pytest.raises(safepool.TaskTimeoutError):
                await pool.options(timeout=0.5).run(tasks.sleep_forever)
            with pytest.raises(TypeError):
                await pool.run(42)

    arun(main())


def test_cancelling_the_awaiting_task_stops_the_running_call(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(1) as pool:
            call = asyncio.create_task(
                pool.run(aio_tasks.started_then_mark, fifo.path, str(marker), 3))
            pid = await started_pid(fifo)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert pool.stats().recycled["stopped"] == 1
            assert_stopped(pid, marker)
            assert await pool.run(tasks.add, 1) == 1  # the pool carries on

    arun(main())


def test_a_cancelled_call_that_has_not_started_never_starts(arun, tmp_path):
    marker, release = tmp_path / "marker", tmp_path / "release"

    async def main():
        async with safepool.Executor(1, spare_workers=0) as pool:
            blocker = pool.submit(aio_tasks.wait_for_path, str(release), 30)
            call = asyncio.create_task(pool.run(aio_tasks.mark, str(marker)))
            await asyncio.sleep(0)  # let it submit
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            release.touch()
            assert await asyncio.wrap_future(blocker) == "seen"
            await pool.run(tasks.add, 1)  # after the cancelled call, had it run
            assert not marker.exists()
            stats = pool.stats()
            assert (stats.cancelled, stats.recycled["stopped"]) == (1, 0)

    arun(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_asyncio_timeout_around_the_await_stops_the_call(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        loop = asyncio.get_running_loop()
        async with safepool.Executor(1) as pool:
            started = asyncio.ensure_future(started_pid(fifo))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as scope:
                    # It expires once the call runs.
                    started.add_done_callback(lambda _: scope.reschedule(loop.time()))
                    await pool.run(aio_tasks.started_then_mark, fifo.path, str(marker), 3)
            assert_stopped(started.result(), marker)
            assert pool.stats().recycled["stopped"] == 1

    arun(main())


def test_wait_for_stops_the_call_when_it_times_out(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(1) as pool:
            call = asyncio.ensure_future(
                pool.run(aio_tasks.started_then_mark, fifo.path, str(marker), 3))
            pid = await started_pid(fifo)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(call, 0.01)
            assert_stopped(pid, marker)

    arun(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in 3.11")
def test_a_failing_task_group_stops_its_other_calls(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(2) as pool:
            pid = None
            with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821 (3.11+)
                async with asyncio.TaskGroup() as group:
                    group.create_task(
                        pool.run(aio_tasks.started_then_mark, fifo.path, str(marker), 3))
                    pid = await started_pid(fifo)
                    group.create_task(pool.run(tasks.raise_value, "boom"))
            assert [type(e) for e in info.value.exceptions] == [ValueError]
            assert_stopped(pid, marker)

    arun(main())


def test_run_through_a_task_function(arun):
    async def main():
        async with safepool.Executor(1) as pool:
            fn = safepool.task(executor=pool)(tasks.add)
            assert await fn.run(4, 5) == 9

    arun(main())


# ------------------------------------------------------------- async with, aclose


def test_leaving_async_with_lets_the_loop_serve_other_coroutines(arun, tmp_path):
    """The task waits for a file only another coroutine writes while the block exits."""
    seen = tmp_path / "seen"

    async def main():
        leaving = asyncio.Event()

        async def other_coroutine():
            await leaving.wait()
            await asyncio.sleep(0)  # runs only if the exit does not block the loop
            seen.touch()

        helper = asyncio.ensure_future(other_coroutine())
        async with safepool.Executor(1) as pool:
            future = pool.submit(aio_tasks.wait_for_path, str(seen), 10)
            leaving.set()
        assert future.result(timeout=0) == "seen"  # done when the block was left
        await helper

    arun(main())


def test_a_cancelled_aclose_stops_the_running_calls(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        pool = safepool.Executor(1)
        future = pool.submit(aio_tasks.started_then_mark, fifo.path, str(marker), 3)
        pid = await started_pid(fifo)
        closing = asyncio.ensure_future(pool.aclose())
        await asyncio.sleep(0.05)  # let it start waiting (a cancellation before is the same)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(safepool.PoolStoppedError):
            await asyncio.wrap_future(future)
        assert_stopped(pid, marker)
        with pytest.raises(RuntimeError):
            pool.submit(tasks.add, 1)

    arun(main())


# --------------------------------------------------------------------- map_async


def test_map_async_gives_the_results_in_order(arun):
    async def main():
        async with safepool.Executor(2) as pool:
            assert [r async for r in pool.map_async(tasks.add, range(20), range(20))] == [
                2 * i for i in range(20)]
            assert [r async for r in pool.map_async(abs, range(-9, 9), chunksize=4)] == [
                abs(i) for i in range(-9, 9)]
            endless = pool.map_async(abs, iter(lambda: -1, 0), buffersize=2)
            async with contextlib.aclosing(endless):
                got = []
                async for r in endless:
                    got.append(r)
                    if len(got) == 5:
                        break
            assert got == [1] * 5
            assert [r async for r in pool.options(timeout=10).map_async(tasks.add, [1])] == [1]

    arun(main())


def test_map_async_raises_at_the_failing_item_and_stops_the_rest(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(2, spare_workers=0) as pool:
            results = pool.map_async(aio_tasks.dispatch, [
                ("fail", fifo.path), ("mark", (fifo.path, str(marker)))])
            lines = sorted([await asyncio.to_thread(fifo.line) for _ in range(2)])
            pid = int(lines[1].split()[1])  # "failing <pid>", "started <pid>"
            got = []
            with pytest.raises(ValueError, match="first"):
                async for r in results:
                    got.append(r)
            assert got == []
            assert_stopped(pid, marker)

    arun(main())


def test_breaking_out_of_map_async_stops_the_running_calls(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(2, spare_workers=0) as pool:
            results = pool.map_async(aio_tasks.dispatch, [
                ("fast", None), ("mark", (fifo.path, str(marker)))])
            pid = await started_pid(fifo)
            async with contextlib.aclosing(results):
                async for first in results:
                    assert first == "fast"
                    break
            assert_stopped(pid, marker)

    arun(main())


def test_map_async_timeout_raises_and_stops_the_calls(arun, fifo, tmp_path, caplog):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(1) as pool:
            results = pool.map_async(aio_tasks.started_then_mark, [fifo.path],
                                     [str(marker)], [30], timeout=3)
            pid = await started_pid(fifo)  # it runs; the deadline passes while it does
            with pytest.raises(cf.TimeoutError):
                async for _ in results:
                    pass
            assert_stopped(pid, marker)
        gc.collect()  # a future nobody reads would log "exception was never retrieved" now

    arun(main())
    assert "never retrieved" not in caplog.text


def test_closing_map_async_before_its_first_result_stops_the_calls(arun, fifo, tmp_path):
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(1) as pool:
            results = pool.map_async(aio_tasks.started_then_mark, [fifo.path], [str(marker)],
                                     [30])
            pid = await started_pid(fifo)
            await results.aclose()
            assert_stopped(pid, marker)

    arun(main())


def test_a_failing_stop_does_not_replace_the_cancellation(arun, fifo, tmp_path, caplog):
    """On a cluster the stop is a network call: if it fails, the caller still sees its
    cancellation (asyncio.timeout() needs it to raise TimeoutError), and the error is logged."""
    marker = tmp_path / "marker"

    async def main():
        async with safepool.Executor(1) as pool:
            def unreachable(future):
                raise OSError("the cluster went away")

            pool.stop_task = unreachable  # what run() calls to stop the call
            call = asyncio.ensure_future(
                pool.run(aio_tasks.started_then_mark, fifo.path, str(marker), 30))
            await started_pid(fifo)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            pool.kill_workers()

    arun(main())
    assert "could not stop" in caplog.text and "the cluster went away" in caplog.text


def test_cancelling_the_block_of_async_with_stops_its_calls(arun, fifo, tmp_path):
    """Nobody is left to read the results: leaving the block by a cancellation does not wait."""
    marker = tmp_path / "marker"

    async def main():
        async def block():
            async with safepool.Executor(1) as pool:
                pool.submit(aio_tasks.started_then_mark, fifo.path, str(marker), 30)
                await asyncio.sleep(60)

        task = asyncio.ensure_future(block())
        pid = await started_pid(fifo)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)  # not the task's 30 s
        assert_stopped(pid, marker)

    arun(main())


def test_map_async_refuses_bad_arguments_at_the_call(arun):
    async def main():
        async with safepool.Executor(1) as pool:
            with pytest.raises(ValueError):
                pool.map_async(abs, [1], chunksize=0)
            with pytest.raises(TypeError):
                pool.map_async(42, [1])
        with pytest.raises(RuntimeError):
            pool.map_async(abs, [1])

    arun(main())


# ----------------------------------------------------------- as_completed_async


def test_as_completed_async_takes_futures_of_any_executor(arun, tmp_path):
    release = tmp_path / "release"

    async def main():
        with cf.ThreadPoolExecutor(1) as threads:
            async with safepool.Executor(1) as pool:
                slow = pool.submit(aio_tasks.wait_for_path, str(release), 30)
                fast = threads.submit(lambda: "thread")
                order = []
                async for future in safepool.as_completed_async([slow, fast, fast]):
                    order.append(future.result())
                    release.touch()
                assert order == ["thread", "seen"]
                never = cf.Future()
                with pytest.raises(cf.TimeoutError, match=r"1 \(of 1\) futures unfinished"):
                    async for _ in safepool.as_completed_async([never], timeout=0.05):
                        pass

    arun(main())


def test_using_the_executor_imports_no_event_loop_machinery_of_ours():
    code = ("import safepool, sys; safepool.Executor(1).submit(abs, -1).result(); "
            "assert 'safepool._aio' not in sys.modules and 'uvloop' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
