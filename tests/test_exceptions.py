"""Child exceptions reach the parent as themselves, with the child traceback."""

from __future__ import annotations

import threading

import pytest

import safepool
from tests import tasks


def test_original_type_with_child_traceback_as_cause_and_pid(make_pool):
    pool = make_pool(1)
    worker = pool.submit(tasks.pid).result(timeout=30)
    with pytest.raises(ValueError, match="the message") as info:
        pool.submit(tasks.raise_value, "the message").result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, safepool.RemoteTraceback)
    assert cause.pid == worker
    assert 'in raise_value\n    raise ValueError(message)' in cause.traceback
    assert f"Traceback in worker pid {worker}" in str(cause)
    assert "_worker.py" not in cause.traceback  # starts at the task's own frame


def test_system_exit_in_a_task_is_reported_not_fatal(make_pool):
    pool = make_pool(1)
    with pytest.raises(SystemExit):
        pool.submit(tasks.raise_system_exit).result(timeout=30)
    assert pool.submit(tasks.add, 1).result(timeout=30) == 1


@pytest.mark.parametrize(
    ("fn", "type_name", "message"),
    [
        (tasks.raise_needs_two_args, "tests.tasks.NeedsTwoArgs", "left/right"),
        (tasks.raise_holds_a_lock, "tests.tasks.HoldsALock", "locked out"),
    ],
    ids=["cannot-rebuild", "cannot-pickle"],
)
def test_exceptions_that_cannot_cross_become_remote_error(make_pool, fn, type_name, message):
    pool = make_pool(2)
    bystander = pool.submit(tasks.pid_after, 0.5)
    with pytest.raises(safepool.RemoteError) as info:
        pool.submit(fn).result(timeout=30)
    error = info.value
    assert (error.type_name, error.message) == (type_name, message)
    assert f"raise {type_name.rsplit('.', 1)[1]}(" in error.traceback
    assert error.pid is not None and error.pid == error.__cause__.pid
    assert isinstance(bystander.result(timeout=30), int)  # the pool is not broken
    assert pool.submit(tasks.add, 4).result(timeout=30) == 4


def test_unpicklable_argument_fails_its_future_naming_it(make_pool):
    pool = make_pool(1)
    with pytest.raises(safepool.PicklingError) as info:
        pool.submit(tasks.add, 1, threading.Lock()).result(timeout=0)
    assert info.value.what == "args[1]"
    assert "args[1] (type _thread.lock)" in str(info.value)
    assert "as a worker resource" in str(info.value)
    with pytest.raises(TypeError, match=r"kwargs\['b'\]"):
        pool.submit(tasks.add, 1, b=threading.Lock()).result(timeout=0)
    assert pool.submit(tasks.add, 1).result(timeout=30) == 1


def test_unpicklable_function_fails_its_future_with_advice(make_pool):
    pool = make_pool(1)
    with pytest.raises(safepool.PicklingError, match=r"the function .*module level"):
        pool.submit(lambda: 1).result(timeout=0)

    def nested():
        return 1

    with pytest.raises(safepool.PicklingError, match="module level"):
        pool.submit(nested).result(timeout=0)


def test_unpicklable_result_fails_only_that_future_naming_its_type(make_pool):
    pool = make_pool(1)
    worker = pool.submit(tasks.pid).result(timeout=30)
    with pytest.raises(safepool.PicklingError) as info:
        pool.submit(tasks.return_unpicklable).result(timeout=30)
    assert info.value.what == "result"
    assert info.value.type_name == "_thread.lock"
    assert pool.submit(tasks.pid).result(timeout=30) == worker  # same worker, still fine


def test_a_task_raising_keyboard_interrupt_does_not_stop_the_executor(make_pool):
    pool = make_pool(1)
    with pytest.raises(KeyboardInterrupt, match="raised by the task"):
        pool.submit(tasks.raise_keyboard_interrupt).result(timeout=30)
    assert pool.submit(tasks.add, 1).result(timeout=30) == 1


def test_an_unpicklable_result_has_no_empty_child_traceback(make_pool):
    pool = make_pool(1)
    error = pool.submit(tasks.return_unpicklable).exception(timeout=30)
    assert isinstance(error, safepool.PicklingError)
    assert error.__cause__ is None
