"""Nothing a task sends can stop the pool.

Whatever pickling or unpickling raises, on either side, even a BaseException that is not
an Exception (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``, the application's
own), fails only the future involved, with an error that says what happened, and the
same worker serves the next task. Each test throws every kind of BaseException at one
pool, so a pool that died of the first would fail on the second.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys

import safepool
from tests import hostile_pickles as hp

KINDS = list(hp.BASE_EXCEPTIONS.values())


def _next_task_runs_on(pool: safepool.Executor, worker: int) -> None:
    assert pool.submit(hp.pid).result(timeout=30) == worker  # no worker was lost either


def test_an_argument_raising_while_pickled_fails_its_future_with_a_pickling_error(make_pool):
    """Raised in the caller's thread by ``submit``; KeyboardInterrupt is the exception
    (``test_keyboard_interrupt_while_pickling_is_raised_by_submit``)."""
    pool = make_pool(1)
    worker = pool.submit(hp.pid).result(timeout=30)
    for error in (k for k in KINDS if k is not KeyboardInterrupt):
        future = pool.submit(hp.identity, hp.RaisesOnPickle(error))
        failure = future.exception(timeout=0)
        assert isinstance(failure, safepool.PicklingError), repr(failure)
        assert failure.what == "args[0]"
        assert f"{error.__name__}: raised while pickling" in str(failure)
        assert isinstance(failure.__cause__, error)
        _next_task_runs_on(pool, worker)


def test_an_argument_raising_while_rebuilt_in_the_worker_fails_only_its_task(make_pool):
    pool = make_pool(1)
    worker = pool.submit(hp.pid).result(timeout=30)
    for error in KINDS:
        future = pool.submit(hp.identity, hp.RaisesWhenRebuiltElsewhere(error))
        failure = future.exception(timeout=30)
        assert type(failure) is error, repr(failure)
        assert str(failure) == "raised while unpickling"
        if sys.version_info >= (3, 11):  # a note in the child traceback says where
            assert "unpickled the task" in str(failure.__cause__)
        _next_task_runs_on(pool, worker)


def test_a_result_raising_while_pickled_in_the_worker_is_delivered_as_the_stdlib_does(
    make_pool,
):
    """concurrent.futures puts what pickling the result raised on the future; so does
    safepool, instead of letting the worker die of it."""
    pool = make_pool(1)
    worker = pool.submit(hp.pid).result(timeout=30)
    for error in KINDS:
        failure = pool.submit(hp.return_raising_on_pickle, error).exception(timeout=30)
        assert type(failure) is error, repr(failure)
        assert str(failure) == "raised while pickling"
        assert isinstance(failure.__cause__, safepool.RemoteTraceback)
        _next_task_runs_on(pool, worker)


def test_a_result_raising_while_rebuilt_in_the_parent_fails_only_its_future(make_pool):
    pool = make_pool(1)
    worker = pool.submit(hp.pid).result(timeout=30)
    for error in KINDS:
        failure = pool.submit(hp.return_raising_in_parent, error).exception(timeout=30)
        assert isinstance(failure, safepool.PicklingError), repr(failure)
        assert failure.what == "result"
        assert f"could not be unpickled in the parent: {error.__name__}" in str(failure)
        assert isinstance(failure.__cause__, error)
        _next_task_runs_on(pool, worker)


def test_an_exception_whose_reduce_raises_arrives_as_a_remote_error(make_pool):
    pool = make_pool(1)
    worker = pool.submit(hp.pid).result(timeout=30)
    for error in KINDS:
        failure = pool.submit(hp.raise_unpicklable, error).exception(timeout=30)
        assert isinstance(failure, safepool.RemoteError), repr(failure)
        assert failure.type_name == "tests.hostile_pickles.ReduceRaises"
        assert failure.message == "an exception that cannot be pickled"
        assert error.__name__ in failure.pickling_error
        assert "raise ReduceRaises(error)" in failure.traceback
        _next_task_runs_on(pool, worker)


def test_an_exception_raising_while_rebuilt_in_the_parent_arrives_as_a_remote_error(
    make_pool,
):
    pool = make_pool(1)
    worker = pool.submit(hp.pid).result(timeout=30)
    for error in KINDS:
        failure = pool.submit(hp.raise_unrebuildable_in_parent, error).exception(timeout=30)
        assert isinstance(failure, safepool.RemoteError), repr(failure)
        assert failure.type_name == "tests.hostile_pickles.RebuildRaises"
        assert f"could not be rebuilt in the parent: {error.__name__}" in failure.pickling_error
        assert failure.pid == worker
        _next_task_runs_on(pool, worker)


def test_a_done_callback_raising_system_exit_neither_stops_the_pool_nor_the_others(
    make_pool, caplog
):
    """Callbacks run on the manager thread: the stdlib lets a BaseException out of
    ``_invoke_callbacks``, which would end that thread and the pool with it."""
    pool = make_pool(1)
    seen = []

    def exits(_future: cf.Future) -> None:
        raise SystemExit("from a callback")

    future = pool.submit(hp.pid)
    future.add_done_callback(exits)
    future.add_done_callback(seen.append)
    worker = future.result(timeout=30)
    _next_task_runs_on(pool, worker)
    assert seen == [future]  # the callback after the failing one still ran
    assert "exception calling callback" in caplog.text
