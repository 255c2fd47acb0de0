"""``map`` on the local engine: its calls are queued unpickled, in batches, and the
manager thread pickles each as it sends it (``safepool._mapcalls``).

What must hold, whatever thread pickles: results in order, a call that cannot be
pickled failing only its own future (a chunk being split call by call, in ``map``
and ``map_async`` alike), a pool that survives any exception pickling raises, and
user code run by pickling free to submit to the same pool.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeout

import pytest

import safepool
from safepool import _progress
from safepool._context import THREAD_PREFIX
from tests import hostile_pickles as hp
from tests import map_feed_tasks as mt
from tests import prefetch_tasks as pt
from tests.conftest import open_gate


@pytest.fixture(autouse=True)
def _fresh_records(monkeypatch):
    # As in an application without OpenTelemetry: with it in use, each call is pickled
    # (and traced) in the caller's thread, and earlier tests in this process import it.
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)
    mt.PICKLED_IN.clear()
    mt.SubmitsWhenPickled.submitted = []
    yield
    mt.SubmitsWhenPickled.pool = None


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_calls_are_pickled_by_the_manager_thread_and_submit_calls_by_the_caller(
    make_pool, chunksize
):
    pool = make_pool(2)
    items = [mt.PickledWhere(i) for i in range(40)]
    assert list(pool.map(mt.double, items, chunksize=chunksize)) == [2 * i for i in range(40)]
    pickled_in = list(mt.PICKLED_IN)
    assert pickled_in == [f"{THREAD_PREFIX}manager"] * 40
    mt.PICKLED_IN.clear()
    assert pool.submit(mt.double, mt.PickledWhere(5)).result(timeout=30) == 10
    pickled_in = list(mt.PICKLED_IN)
    assert pickled_in == [threading.current_thread().name]


def test_a_map_over_many_calls_keeps_their_order_and_counts_each(make_pool):
    pool = make_pool(2)
    n = 3000  # many batches of up to 64 calls
    assert list(pool.map(mt.double, range(n))) == [2 * i for i in range(n)]
    stats = pool.stats()
    assert (stats.submitted, stats.completed) == (n, n)


def test_big_arguments_among_small_ones_while_tasks_are_prefetched(make_pool):
    """A call found to be too big to wait in a busy worker's pipe only once pickled
    (in the manager) waits for an idle worker, first in line: nothing is lost or
    reordered."""
    pool = make_pool(2)
    list(pool.map(mt.double, range(500)))  # short tasks: prefetch is on
    items: list[bytes | int] = [b"x" * (40_000 + i) if i % 5 == 0 else i for i in range(200)]
    expected = [mt.size(item) for item in items]
    assert list(pool.map(mt.size, items)) == expected
    assert list(pool.map(mt.size, items, chunksize=7)) == expected


def test_every_exception_pickling_raises_in_the_manager_fails_only_that_call(make_pool):
    """Even KeyboardInterrupt and SystemExit, raised by an argument's ``__reduce__`` in
    the manager thread, become a PicklingError on that call's future; the pool goes on."""
    pool = make_pool(1)
    for error in hp.BASE_EXCEPTIONS.values():
        results = pool.map(hp.identity, [1, hp.RaisesOnPickle(error), 3])
        assert next(results) == 1
        with pytest.raises(safepool.PicklingError) as info:
            next(results)
        assert info.value.what == "args[0]", (error, info.value)
        assert error.__name__ in str(info.value)
        results.close()
    assert list(pool.map(hp.identity, [7, 8])) == [7, 8]


def test_pickling_may_submit_to_the_same_pool(make_pool):
    """The manager pickles outside its lock, so an argument whose pickling submits to the
    pool (user code runs while pickling) neither deadlocks nor loses the task."""
    pool = make_pool(2)
    mt.SubmitsWhenPickled.pool = pool
    items = [mt.SubmitsWhenPickled(i) for i in range(5)]
    assert list(pool.map(mt.double, items, timeout=30)) == [0, 2, 4, 6, 8]
    assert [f.result(timeout=30) for f in mt.SubmitsWhenPickled.submitted] == [0, 2, 4, 6, 8]


def test_map_async_sends_a_chunk_that_cannot_be_pickled_call_by_call(make_pool):
    pool = make_pool(1)
    items = [0, 1, 2, threading.Lock(), 4, 5]

    async def collect() -> tuple[list[int], BaseException | None]:
        got: list[int] = []
        try:
            async for value in pool.map_async(hp.identity, items, chunksize=4):
                got.append(value)
        except safepool.PicklingError as error:
            return got, error
        return got, None

    got, error = asyncio.run(collect())
    assert got == [0, 1, 2]
    assert isinstance(error, safepool.PicklingError)
    assert error.what == "args[0]"  # the call's own path, not the chunk's


def test_progress_counts_a_split_chunk_once_per_call(make_pool, capsys, monkeypatch):
    """The chunk that failed to pickle as a whole is not counted: its calls are, each
    once, when they end (the one that cannot be pickled as the one failure)."""
    monkeypatch.setattr(_progress, "_tqdm_module", None)  # the plain stderr line
    pool = make_pool(1)
    items = [0, 1, 2, 3, 4, threading.Lock(), 6, 7]
    results = pool.map(hp.identity, items, chunksize=4, progress="split")
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(safepool.PicklingError):
        next(results)
    final = capsys.readouterr().err.splitlines()[-1]
    assert re.match(r"split: [5-8]/8 tasks \(1 failed\)", final), final


@pytest.mark.parametrize("progress", [False, "p"])
def test_an_abandoned_map_reports_the_pickling_error_of_its_unsent_chunk(
    make_pool, caplog, monkeypatch, progress
):
    """A chunk that could not be pickled, in a map nobody iterates, is reported as its
    PicklingError (the internal split marker never shows); a progress bar counting
    it does not count as retrieving the error."""
    monkeypatch.setattr(_progress, "_tqdm_module", None)
    pool = make_pool(1)
    results = pool.map(hp.identity, [0, threading.Lock()], chunksize=2, progress=progress)
    assert pool.submit(hp.identity, 1).result(timeout=30) == 1  # the chunk was taken first
    del results
    deadline = time.monotonic() + 10
    found: list[logging.LogRecord] = []
    while not found and time.monotonic() < deadline:
        gc.collect()
        found = [r for r in caplog.records if "never retrieved" in r.getMessage()]
        time.sleep(0.02)
    (record,) = found
    assert "PicklingError" in record.getMessage()
    assert "UnpicklableChunk" not in record.getMessage()


def test_a_chunk_split_by_the_manager_runs_even_if_the_map_is_read_after_shutdown(make_pool):
    """The calls of a chunk that cannot be pickled as a whole are queued by the manager
    when it finds out, so reading the map only after ``shutdown()`` still gets the calls
    before the bad one, then its PicklingError, as with a map read at once."""
    pool = make_pool(1)
    results = pool.map(hp.identity, [0, 1, threading.Lock(), 3, 4, 5], chunksize=3)
    pool.shutdown(wait=True)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(safepool.PicklingError) as info:
        next(results)
    assert info.value.what == "args[0]"
    stats = pool.stats()
    # The first chunk became its 3 calls: 0 and 1 ran, the lock failed; the second ran.
    assert (stats.submitted, stats.completed, stats.failed) == (4, 3, 1)


def test_a_timeout_fires_between_slow_pickles_of_a_map(make_pool):
    """The manager pickles a map's calls; an argument slow to pickle holds up a timeout
    by at most its own pickling, not by a whole round of calls (32 may be prefetched)."""
    mt.SLOW_PICKLED.clear()
    mt.PICKLED_WHEN_DONE.clear()
    pool = make_pool(2)
    list(pool.map(mt.double, range(200)))  # short tasks: prefetch is on
    hung = pool.options(timeout=0.5).submit(time.sleep, 60)
    hung.add_done_callback(mt.note_when_done)
    results = pool.map(mt.double, [mt.SlowToPickle(i) for i in range(40)])
    with pytest.raises(safepool.TaskTimeoutError):
        hung.result(timeout=30)
    assert list(results) == [2 * i for i in range(40)]
    # 0.5 s of 0.1 s pickles: about 5 before the deadline (not the 33 of one round).
    (pickled,) = mt.PICKLED_WHEN_DONE
    assert pickled <= 15, mt.PICKLED_WHEN_DONE


def test_a_chunk_split_while_the_pool_is_being_stopped_is_cancelled_not_lost(make_pool):
    """The pool is stopped while the manager pickles a chunk, which then cannot be
    pickled: its calls are cancelled, as the queue's were, and the stop completes
    (they are not queued behind a stop that has already emptied the queue)."""
    pool = make_pool(1)
    mt.StopsThePoolThenFails.pool = pool
    mt.StopsThePoolThenFails.STOPPER.clear()
    results = pool.map(hp.identity, [0, mt.StopsThePoolThenFails(), 2], chunksize=3)
    with pytest.raises(CancelledError):
        next(results)
    (stopper,) = mt.StopsThePoolThenFails.STOPPER
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    stats = pool.stats()
    assert (stats.submitted, stats.cancelled) == (3, 3)


def _split_chunk_with_two_calls_queued(pool, fifo, gate, lock):
    """A map whose first chunk the manager splits: its first call runs (held at ``gate``),
    the lock fails to pickle, and two calls wait in the pool's queue."""
    tags = ["first", lock, "third", "fourth"]
    return [fifo.path] * 4, tags, [gate] * 4


@pytest.mark.parametrize("how", ["close", "timeout"])
def test_stopping_a_map_cancels_the_queued_calls_of_a_split_chunk(make_pool, fifo, gate, how):
    """The calls of a chunk the manager split wait in the pool's queue, not in the map:
    closing the map (or its timeout) cancels them too, as it cancels its unsent chunks."""
    pool = make_pool(1)
    args = _split_chunk_with_two_calls_queued(pool, fifo, gate, threading.Lock())
    results = pool.map(pt.note_then_wait, *args, chunksize=4,
                       timeout=0.5 if how == "timeout" else None)
    assert fifo.line().split()[0] == "first"  # split: its first call is running
    if how == "close":
        results.close()
    else:
        with pytest.raises(FuturesTimeout):  # not the builtin before 3.11
            list(results)
    open_gate(gate)
    pool.shutdown(wait=True)
    assert fifo.pending() == ""  # neither "third" nor "fourth" ran
    stats = pool.stats()
    assert (stats.submitted, stats.completed, stats.cancelled) == (4, 1, 3)


def test_closing_a_map_async_cancels_the_queued_calls_of_a_split_chunk(make_pool, fifo, gate):
    pool = make_pool(1)
    args = _split_chunk_with_two_calls_queued(pool, fifo, gate, threading.Lock())

    async def read_then_close() -> None:
        results = pool.map_async(pt.note_then_wait, *args, chunksize=4)
        await results.__anext__()  # waits for "first", which waits for the gate
    async def main() -> None:
        task = asyncio.ensure_future(read_then_close())
        line = await asyncio.to_thread(fifo.line)
        assert line.split()[0] == "first"
        task.cancel()  # the iteration ends: what is left is cancelled or stopped
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    pool.shutdown(wait=True)
    assert fifo.pending() == ""
    stats = pool.stats()
    # "first" was stopped (its worker killed), the three queued were cancelled.
    assert (stats.submitted, stats.stopped, stats.cancelled) == (4, 1, 3)
