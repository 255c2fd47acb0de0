"""A failed future whose exception nobody retrieved is logged, with the child traceback."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import wait

import pytest

from tests import obs_tasks
from tests.conftest import run_script, stop_script


def reports(caplog, expected: int = 0) -> list[logging.LogRecord]:
    """The unretrieved-exception reports, waiting (bounded) for ``expected`` of them.

    The manager thread may still hold a resolved future for a moment after
    ``wait`` returns (it goes on to kill the worker), so its report can lag.
    """
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        found = [
            r for r in caplog.records
            if r.name == "safepool" and "never retrieved" in r.getMessage()
        ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def settle(pool) -> None:
    """Make sure the manager thread has moved past earlier futures (so none is held)."""
    assert pool.submit(obs_tasks.succeed, 1).result(timeout=30) == 1


def drop(future) -> None:
    wait([future], timeout=30)
    assert future.done()
    del future
    gc.collect()


def test_unretrieved_failure_is_logged_with_the_child_traceback(make_pool, caplog):
    pool = make_pool(1)
    drop(pool.submit(obs_tasks.fail, "nobody looked"))
    (record,) = reports(caplog, 1)
    assert record.levelno == logging.ERROR
    assert "exception in tests.obs_tasks.fail() was never retrieved" in record.getMessage()
    assert "ValueError: nobody looked" in record.getMessage()
    text = logging.Formatter().formatException(record.exc_info)
    assert "Traceback in worker pid" in text
    assert 'in fail\n    raise ValueError(message)' in text


def test_fire_and_forget_submit_is_reported(make_pool, caplog):
    pool = make_pool(1)
    pool.submit(obs_tasks.fail, "fire and forget")  # the future is dropped at once
    pool.shutdown(wait=True)
    gc.collect()
    assert len(reports(caplog, 1)) == 1


def test_crash_and_timeout_are_reported_too(make_pool, caplog):
    pool = make_pool(1, timeout=0.5)
    drop(pool.submit(obs_tasks.crash))
    drop(pool.submit(obs_tasks.hang))
    messages = [r.getMessage() for r in reports(caplog, 2)]
    assert len(messages) == 2
    assert "WorkerCrashedError" in messages[0]
    assert "TaskTimeoutError" in messages[1]


@pytest.mark.parametrize("how", ["result", "exception"])
def test_retrieved_failure_is_not_logged(make_pool, caplog, how):
    pool = make_pool(1)
    future = pool.submit(obs_tasks.fail, "looked at")
    if how == "result":
        with pytest.raises(ValueError):
            future.result(timeout=30)
    else:
        assert isinstance(future.exception(timeout=30), ValueError)
    drop(future)
    settle(pool)
    assert reports(caplog) == []


def test_awaited_through_asyncio_is_retrieved(make_pool, caplog):
    pool = make_pool(1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError):
            await loop.run_in_executor(pool, obs_tasks.fail, "awaited")

    asyncio.run(main())
    settle(pool)
    assert reports(caplog) == []


def test_successes_and_cancellations_are_not_logged(make_pool, caplog):
    pool = make_pool(1)
    blocker = pool.submit(obs_tasks.sleep_then, 1, 0.5)
    queued = pool.submit(obs_tasks.fail, "never ran")
    assert queued.cancel()
    drop(blocker)
    drop(queued)
    settle(pool)
    assert reports(caplog) == []


def test_stopped_tasks_are_not_logged(make_pool, caplog):
    pool = make_pool(1)
    future = pool.submit(obs_tasks.hang)
    while not future.running():
        wait([future], timeout=0.05)
    pool.kill_workers()
    drop(future)
    assert reports(caplog) == []


def test_log_unretrieved_false_turns_it_off(make_pool, caplog):
    pool = make_pool(1, log_unretrieved=False)
    drop(pool.submit(obs_tasks.fail, "quiet"))
    settle(pool)
    assert reports(caplog) == []


@pytest.mark.parametrize(("mode", "expected"), [("keep", 1), ("retrieve", 0), ("off", 0)])
def test_failures_still_alive_at_interpreter_exit_are_logged(mode, expected):
    proc = run_script("unretrieved.py", mode)
    out, err = stop_script(proc)
    assert proc.returncode == 0, err
    assert out.strip() == "done"
    assert err.count("was never retrieved") == expected, err
    if expected:
        assert "exception in tests.obs_tasks.fail() was never retrieved" in err
        assert "Traceback in worker pid" in err
