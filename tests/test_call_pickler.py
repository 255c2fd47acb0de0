"""Calls are pickled with a pickler kept per thread (``submit``) and one kept by the
manager thread (``map``): ``safepool._transport.CallPickler``.

A kept pickler must give what a fresh one gives: a call after one that failed
pickles, a reducer registered later is used, and a ``__reduce__`` that submits
(pickling a call while this thread's pickler is mid-way through another) gets
its own.
"""

from __future__ import annotations

import copyreg
import pickle
import sys
import threading

import pytest

import safepool
from safepool import _transport
from tests import map_feed_tasks as mt


@pytest.fixture(autouse=True)
def _untraced(monkeypatch):
    # As in an application without OpenTelemetry (earlier tests in this process import
    # it): map's calls then go to the manager thread's pickler.
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)
    yield
    mt.SubmitsWhenPickled.pool = None
    mt.SubmitsWhenPickled.submitted = []


def test_a_call_after_one_that_cannot_be_pickled_pickles(make_pool):
    pool = make_pool(1)
    bad = pool.submit(mt.double, threading.Lock())
    assert isinstance(bad.exception(timeout=0), safepool.PicklingError)
    assert pool.submit(mt.double, 4).result(timeout=30) == 8
    results = pool.map(mt.double, [1, threading.Lock(), 3])
    assert next(results) == 2
    with pytest.raises(safepool.PicklingError):
        next(results)
    assert list(pool.map(mt.double, [5, 6])) == [10, 12]


def test_a_reducer_registered_after_calls_were_pickled_is_used(make_pool):
    pool = make_pool(1)
    assert pool.submit(mt.double, 1).result(timeout=30) == 2  # the pickler is made
    assert list(pool.map(mt.double, [1])) == [2]
    future = pool.submit(mt.double, mt.LateReduced(2))
    assert isinstance(future.exception(timeout=30), safepool.PicklingError)
    copyreg.pickle(mt.LateReduced, mt.reduce_late)
    try:
        assert pool.submit(mt.double, mt.LateReduced(3)).result(timeout=30) == 6
        assert list(pool.map(mt.double, [mt.LateReduced(4)])) == [8]
    finally:
        del copyreg.dispatch_table[mt.LateReduced]


def test_a_reducer_replaced_after_calls_were_pickled_is_used(make_pool):
    """Registering another reducer for a type already registered (the registry's size
    unchanged) is taken up too, by submit and by map."""
    pool = make_pool(1)
    copyreg.pickle(mt.LateReduced, mt.reduce_late)
    try:
        assert pool.submit(mt.double, mt.LateReduced(2)).result(timeout=30) == 4
        assert list(pool.map(mt.double, [mt.LateReduced(2)])) == [4]
        copyreg.pickle(mt.LateReduced, mt.reduce_late_tripled)
        assert pool.submit(mt.double, mt.LateReduced(2)).result(timeout=30) == 12
        assert list(pool.map(mt.double, [mt.LateReduced(2)])) == [12]
    finally:
        del copyreg.dispatch_table[mt.LateReduced]


def test_a_submit_while_a_call_is_being_pickled_gets_its_own_pickler(make_pool):
    pool = make_pool(2)
    mt.SubmitsWhenPickled.pool = pool
    outer = pool.submit(mt.double, mt.SubmitsWhenPickled(21))
    assert outer.result(timeout=30) == 42
    (inner,) = mt.SubmitsWhenPickled.submitted
    assert inner.result(timeout=30) == 42


def test_each_thread_keeps_its_own_pickler():
    """And with it its own kept function references (``safepool._fnref``)."""
    picklers = []

    def pickle_one() -> None:
        _transport.pickle_call(mt.double, (1,), {})
        picklers.append(_transport._callers.pickler)

    threads = [threading.Thread(target=pickle_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len({id(p) for p in picklers}) == 3
    assert len({id(p._refs) for p in picklers}) == 3
    assert all(mt.double in p._refs._kept for p in picklers)


def test_a_kept_pickler_gives_what_a_fresh_one_gives():
    """The same arguments, pickled the same way; the function goes ahead of them by
    reference (``safepool._fnref``); the worker unpickles the same call from both."""
    fn, args, kwargs = call = (mt.double, (1, "two", [3.0], {"four": (5,)}), {"six": None})
    fresh = _transport.dumps_call(*call)
    by_reference = _transport._ref_header(pickle.dumps(fn, 5))
    for _ in range(2):  # the second time with the memo cleared and the reference kept
        kept = _transport.pickle_call(*call)
        assert kept == by_reference + _transport._dumps((args, kwargs))
        assert _transport.load_call(kept) == _transport.load_call(fresh) == call


def test_a_big_call_does_not_leave_a_big_memo_behind():
    """clear_memo() keeps the memo's size: after a call with many objects the kept
    pickler is replaced, so later small calls do not sweep a big table each time."""
    _transport.pickle_call(mt.double, (1,), {})
    before = _transport._callers.pickler._pickler
    _transport.pickle_call(mt.double, ([str(i) for i in range(10_000)],), {})
    assert _transport._callers.pickler._pickler is None
    _transport.pickle_call(mt.double, (1,), {})
    assert _transport._callers.pickler._pickler is not before
