"""Pickling failures name the path to the innermost culprit, its type, and what to do."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import pickle
import threading

import pytest

import safepool
from safepool import _pickling
from tests import hostile_pickles
from tests import pickling_tasks as pt

RESOURCE_HINT = "declare it as a worker resource"


def submit_error(pool, fn, *args, **kwargs) -> safepool.PicklingError:
    future = pool.submit(fn, *args, **kwargs)  # never raises for a pickling error
    assert future.done()  # it failed at once, in the caller's thread
    error = future.exception(timeout=0)
    assert isinstance(error, safepool.PicklingError), repr(error)
    return error


# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("make_args", "what"),
    [
        (lambda lock: (pt.Box(db=pt.Box(pool=pt.Box(size=2, _lock=lock))),),
         "args[0].db.pool._lock"),
        (lambda lock: ([1, "two", [3.0, lock]],), "args[0][2][1]"),
        (lambda lock: (1, {"host": "h", "extra": {"guard": lock}}), "args[1]['extra']['guard']"),
        (lambda lock: (pt.Slotted("n", lock),), "args[0].guard"),
        (lambda lock: ((1, pt.Box(items={"k": (lock,)})),), "args[0][1].items['k'][0]"),
    ],
    ids=["attributes", "list", "dict", "slots", "mixed"],
)
def test_the_path_leads_to_the_innermost_culprit(make_pool, make_args, what):
    pool = make_pool(1)
    error = submit_error(pool, pt.identity, *make_args(threading.Lock()))
    assert error.what == what
    assert error.type_name == "_thread.lock"
    assert str(error).startswith(f"cannot pickle {what} (type _thread.lock): cannot pickle")
    assert f"{what} is a _thread.lock" in str(error)
    assert RESOURCE_HINT in str(error)


def test_a_keyword_argument_is_the_root_of_its_path(make_pool):
    pool = make_pool(1)
    error = submit_error(pool, pt.add, 1, b=pt.Box(conn=threading.RLock()))
    assert error.what == "kwargs['b'].conn"
    assert error.type_name == "_thread.RLock"


def test_a_bound_method_names_its_instance(make_pool):
    pool = make_pool(1)
    error = submit_error(pool, pt.Counter().increment)
    assert error.what == "fn.__self__._lock"
    assert "fn is a bound method, so its instance (fn.__self__, type " \
        "tests.pickling_tasks.Counter) is pickled along with it" in str(error)
    assert RESOURCE_HINT in str(error)


def test_a_partial_names_its_arguments(make_pool):
    pool = make_pool(1)
    error = submit_error(pool, functools.partial(pt.add, pt.Box(inner=[threading.Lock()])))
    assert error.what == "fn.args[0].inner[0]"
    error = submit_error(pool, functools.partial(pt.add, 1, b=threading.Lock()))
    assert error.what == "fn.keywords['b']"


def test_a_sqlalchemy_engine_is_named_with_its_integration(make_pool):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pool = make_pool(1)
    repo = pt.Repository(sqlalchemy.create_engine("sqlite://"))
    try:
        error = submit_error(pool, pt.identity, repo)
        assert error.what.startswith("args[0].engine.pool.")  # inside the engine's pool
        assert "args[0].engine is a sqlalchemy.engine.base.Engine" in str(error)
        assert RESOURCE_HINT in str(error)
        assert "safepool.integrations.sqlalchemy.database(" in str(error)
        # a connection alone: the connection itself is what to make per worker
        error = submit_error(pool, pt.identity, repo.conn)
        assert error.what.startswith("args[0].engine.")
        assert "args[0] is a sqlalchemy.engine.base.Connection" in str(error)
    finally:
        repo.close()


def test_a_lock_argument_suggests_a_worker_resource(make_pool):
    pool = make_pool(1)
    error = submit_error(pool, pt.identity, threading.Lock())
    assert (error.what, error.type_name) == ("args[0]", "_thread.lock")
    assert "args[0] is a _thread.lock: connections, engines, pools, locks" in str(error)
    assert "Executor(resources=[safepool.Resource(...)])" in str(error)
    assert "safepool.resource(name)" in str(error)


def test_a_lambda_says_to_define_it_at_module_level(make_pool):
    pool = make_pool(1)
    error = submit_error(pool, pt.identity, pt.Box(callback=lambda: 1))
    assert error.what == "args[0].callback"
    assert "args[0].callback is a lambda" in str(error)
    assert "define the function at module level" in str(error)
    assert "worker resource" not in str(error)

    def nested():
        return 1

    error = submit_error(pool, nested)
    assert error.what == "fn"
    assert "fn is a nested function" in str(error)
    assert "worker resource" not in str(error)


def test_a_generator_says_to_pass_plain_data(make_pool):
    pool = make_pool(1)
    error = submit_error(pool, pt.identity, {"rows": (n for n in range(3))})
    assert (error.what, error.type_name) == ("args[0]['rows']", "generator")
    assert "args[0]['rows'] is a generator" in str(error)
    assert "pass plain data instead, e.g. a list" in str(error)
    assert "worker resource" not in str(error)


def test_the_error_is_on_the_future_and_nothing_is_queued(make_pool):
    pool = make_pool(1)
    threads = set(threading.enumerate())
    future = pool.submit(pt.identity, pt.Box(lock=threading.Lock()))
    with pytest.raises(safepool.PicklingError) as info:
        future.result(timeout=0)
    assert info.value.what == "args[0].lock"
    assert isinstance(info.value.__cause__, TypeError)  # pickle's own error, not a worker's
    assert not isinstance(info.value.__cause__, safepool.RemoteTraceback)
    assert pool._processes == {}  # no worker was started for it
    assert set(threading.enumerate()) == threads  # not even the pool's manager thread
    assert pool.submit(pt.add, 2, 3).result(timeout=30) == 5


def test_earlier_futures_survive_a_later_call_that_does_not_pickle(make_pool):
    """The stdlib convention: ``[pool.submit(f, x) for x in xs]`` loses nothing."""
    pool = make_pool(1)
    futures = [pool.submit(pt.identity, x) for x in (1, threading.Lock(), 3)]
    assert [f.result(timeout=30) for f in (futures[0], futures[2])] == [1, 3]
    assert isinstance(futures[1].exception(timeout=0), safepool.PicklingError)
    done = set(cf.as_completed(futures, timeout=30))  # as_completed sees the failure too
    assert done == set(futures)
    stats = pool.stats()
    assert (stats.submitted, stats.completed, stats.failed) == (3, 2, 1)


def test_map_raises_the_pickling_error_when_iteration_reaches_it(make_pool):
    pool = make_pool(1)
    results = pool.map(pt.identity, [1, threading.Lock(), 3])
    assert next(results) == 1
    with pytest.raises(safepool.PicklingError) as info:
        next(results)
    assert info.value.what == "args[0]"


def test_a_submit_after_shutdown_raises_even_if_the_call_does_not_pickle(make_pool):
    pool = make_pool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pt.identity, threading.Lock())


def test_keyboard_interrupt_while_pickling_is_raised_by_submit(make_pool):
    """A Ctrl-C in the caller's thread is never swallowed into a future."""
    pool = make_pool(1)
    with pytest.raises(KeyboardInterrupt):
        pool.submit(pt.identity, hostile_pickles.RaisesOnPickle(KeyboardInterrupt))
    assert pool.stats().submitted == 0
    assert pool.submit(pt.add, 2, 3).result(timeout=30) == 5


# ------------------------------------------------------------------ results and exceptions


def test_an_unpicklable_result_names_the_path_inside_it(make_pool):
    pool = make_pool(1)
    worker = pool.submit(pt.pid).result(timeout=30)
    error = pool.submit(pt.return_box_holding_a_lock).exception(timeout=30)
    assert isinstance(error, safepool.PicklingError)
    assert error.what == "result.conn._sock"
    assert error.type_name == "_thread.lock"
    assert "result.conn._sock is a _thread.lock" in str(error)
    assert "return plain data" in str(error)
    assert pool.submit(pt.pid).result(timeout=30) == worker  # the worker is fine


def test_an_unpicklable_exception_says_what_could_not_be_pickled(make_pool):
    pool = make_pool(1)
    with pytest.raises(safepool.RemoteError) as info:
        pool.submit(pt.raise_carrying_a_lock).result(timeout=30)
    error = info.value
    assert error.type_name == "tests.pickling_tasks.CarriesALock"
    assert error.pickling_error == (
        "cannot pickle exception.args[0]._lock (type _thread.lock): "
        "cannot pickle '_thread.lock' object"
    )
    assert str(error).startswith(f"tests.pickling_tasks.CarriesALock: {error.message} (")
    assert error.pickling_error in str(error)
    assert isinstance(error.__cause__, safepool.RemoteTraceback)


def test_an_exception_that_cannot_be_rebuilt_says_so(make_pool):
    pool = make_pool(1)
    with pytest.raises(safepool.RemoteError) as info:
        pool.submit(pt.raise_needs_two).result(timeout=30)
    error = info.value
    assert (error.type_name, error.message) == ("tests.pickling_tasks.NeedsTwo", "left+right")
    assert error.pickling_error is not None
    assert error.pickling_error.startswith("it could not be rebuilt: TypeError: ")
    assert "missing 1 required positional argument" in error.pickling_error
    assert error.pickling_error in str(error)


def test_remote_error_keeps_its_pickling_error_through_pickle():
    error = safepool.RemoteError("m.E", "boom", "tb", 12, "cannot pickle exception.x")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.pid, copy.pickling_error) == (12, "cannot pickle exception.x")
    assert str(copy) == str(error)
    assert safepool.RemoteError("m.E", "boom").pickling_error is None
    assert str(safepool.RemoteError("m.E", "boom")) == "m.E: boom"


# ------------------------------------------------------------------ bounded search


def test_cycles_do_not_hide_the_culprit(make_pool):
    pool = make_pool(1)
    top = pt.Box(name="top")
    top.me = top
    top.peer = pt.Box(back=top, items=[top])  # fails only through `top`: a dead end
    top.lock = threading.Lock()
    error = submit_error(pool, pt.identity, top)
    assert error.what == "args[0].lock"


def test_a_huge_list_is_searched_by_halves(make_pool):
    pool = make_pool(1)
    huge = [*range(300_000), {"bad": threading.Lock()}, *range(10)]
    error = submit_error(pool, pt.identity, huge)
    assert error.what == "args[0][300000]['bad']"

    calls = []

    def counting(obj):
        calls.append(1)
        _pickling.forking_dumps(obj)

    culprit = _pickling.find_unpicklable(huge, "x", counting)
    assert culprit is not None and culprit.path == "x[300000]['bad']"
    assert len(calls) < 60  # by halves: about log2(300_000) pickles, not 300_000


def test_the_search_stops_at_its_depth_and_pickle_budget():
    nested: list = []
    inner = nested
    for _ in range(50_000):  # far deeper than pickle's recursion limit on any version
        inner.append([])
        inner = inner[0]
    culprit = _pickling.find_unpicklable(nested, "x")
    assert culprit is not None
    assert culprit.path == "x" + "[0]" * _pickling.MAX_DEPTH
    assert isinstance(culprit.error, RecursionError)
    assert "nested too deeply" in _pickling.hint_for(culprit)

    calls = []

    def counting(obj):
        calls.append(1)
        _pickling.forking_dumps(obj)

    wide = pt.Box(**{f"a{i}": pt.Box(b=[pt.Box(c=threading.Lock())]) for i in range(50)})
    culprit = _pickling.find_unpicklable(wide, "x", counting, max_pickles=3)
    assert culprit is not None and culprit.path.startswith("x")  # best effort, still an answer
    assert len(calls) <= 4


# ------------------------------------------------------------------ initargs


def test_initargs_that_cannot_be_pickled_fail_at_construction(method):
    with pytest.raises(safepool.PicklingError) as info:
        safepool.Executor(1, method, initializer=pt.keep,
                          initargs=("db", pt.Box(conn=threading.Lock())))
    assert info.value.what == "initargs[1].conn"
    assert "initargs[1].conn is a _thread.lock" in str(info.value)
    assert RESOURCE_HINT in str(info.value)


def test_initargs_may_hold_a_multiprocessing_queue(method):
    queue = multiprocessing.get_context("spawn").Queue()
    try:
        with safepool.Executor(1, method, initializer=pt.keep, initargs=(queue,)) as pool:
            worker = pool.submit(pt.put_pid_in_kept_queue).result(timeout=30)
        assert queue.get(timeout=30) == worker
    finally:
        queue.close()
        queue.join_thread()
        del queue  # freed now: the leak checker sees its semaphores and pipes go


def test_chunked_map_raises_at_the_call_that_does_not_pickle_not_before(make_pool):
    """A chunk that cannot be pickled as a whole is sent call by call: the calls before
    the bad one, in the same chunk, still deliver their results."""
    pool = make_pool(1)
    items = [0, 1, 2, threading.Lock(), 4, 5]
    results = pool.map(pt.identity, items, chunksize=4)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(safepool.PicklingError) as info:
        next(results)
    assert info.value.what == "args[0]"  # the call's own path, not the chunk's
    pool.shutdown()
    stats = pool.stats()  # the first chunk went as 4 calls, one of which failed; then [4, 5]
    assert (stats.submitted, stats.failed) == (5, 1)
    assert stats.completed + stats.cancelled == 4  # [4, 5] may have run before the cancel
