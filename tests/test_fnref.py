"""A plain top-level function goes to workers by reference, pickled once per thread
and looked up once per worker (``safepool._fnref``), and still means what pickle
would find by its name at each call: a name that now leads elsewhere, in the
parent or in a worker, is pickled or looked up anew.
"""

from __future__ import annotations

import functools
import pickle
import sys
import types

import pytest

import safepool
from safepool import _fnref, _transport
from tests import fnref_tasks as ft

PLAIN = _transport.dumps_call(ft.original, (1,), {})[:1]  # a pickle's first byte


def _fresh_references() -> _fnref.References:
    return _fnref.References(_transport._ref_header)


def test_a_top_level_function_goes_by_reference_made_once():
    refs = _fresh_references()
    first = refs.reference(ft.original)
    assert first is not None and first[:1] == _transport._BY_REF
    assert refs.reference(ft.original) is first  # kept, not pickled again
    payload = _transport.pickle_call(ft.original, (7,), {"y": 2})
    assert payload[:1] == _transport._BY_REF
    assert _transport.load_call(payload) == (ft.original, (7,), {"y": 2})


@pytest.mark.parametrize(
    "fn",
    [
        len,  # a builtin
        functools.partial(ft.original, 1),
        ft.Holder,  # a class
        ft.Holder.static,  # a function whose name has a dot (Holder.static)
        ft.Holder().method,  # a bound method
        ft.wrapped,  # its __qualname__ leads to another function
    ],
    ids=["builtin", "partial", "class", "static", "bound", "wrapped"],
)
def test_only_plain_top_level_functions_go_by_reference(fn):
    assert _fresh_references().reference(fn) is None
    try:
        payload = _transport.pickle_call(fn, (), {})
    except safepool.PicklingError:  # ``wrapped``: as without references, it cannot be pickled
        assert fn is ft.wrapped
        with pytest.raises(safepool.PicklingError):
            _transport.dumps_call(fn, (), {})
        return
    assert payload[:1] == PLAIN


def test_an_unhashable_callable_is_pickled_as_before():
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> None: ...

    assert _fresh_references().reference(Unhashable()) is None


def test_a_name_that_now_leads_elsewhere_in_the_parent_fails_as_without_keeping(
    make_pool, monkeypatch
):
    pool = make_pool(1)
    kept = ft.original
    assert pool.submit(kept, 1).result(timeout=30) == ("original", 1)  # kept now
    monkeypatch.setattr(ft, "original", ft.replacement)
    with pytest.raises(safepool.PicklingError):  # what pickling it afresh says
        _transport.dumps_call(kept, (2,), {})
    assert isinstance(pool.submit(kept, 2).exception(timeout=30), safepool.PicklingError)
    monkeypatch.undo()
    assert pool.submit(kept, 3).result(timeout=30) == ("original", 3)


def test_a_module_replaced_in_sys_modules_is_looked_up_again(monkeypatch):
    refs = _fresh_references()
    before = refs.reference(ft.original)
    stand_in = types.ModuleType(ft.__name__)
    monkeypatch.setitem(sys.modules, ft.__name__, stand_in)
    assert refs.reference(ft.original) is None  # its name no longer leads to it
    stand_in.original = ft.original  # type: ignore[attr-defined]
    again = refs.reference(ft.original)
    assert again == before and again is not before  # made anew, for the new module


def test_a_name_that_now_leads_elsewhere_in_a_worker_finds_the_new_function(make_pool):
    """As pickle would: a worker looks a kept function up again when its name has
    been rebound there (by a task, here)."""
    pool = make_pool(1)
    assert pool.submit(ft.original, 1).result(timeout=30) == ("original", 1)
    pool.submit(ft.replace_original_here).result(timeout=30)
    assert pool.submit(ft.original, 2).result(timeout=30) == ("replacement", 2)


def test_the_worker_side_keeps_what_a_reference_named_until_the_name_changes(monkeypatch):
    monkeypatch.setattr(_fnref, "_functions", {})
    ref = pickle.dumps(ft.original, 5)
    assert _fnref.function(ref) is ft.original
    assert ref in _fnref._functions
    assert _fnref.function(ref) is ft.original
    monkeypatch.setattr(ft, "original", ft.replacement)
    assert _fnref.function(ref) is ft.replacement  # looked up again
    # The name leads to a function named otherwise: found each time, never kept.
    assert ref not in _fnref._functions
    monkeypatch.setattr(ft, "original", ft.wrapped)
    assert _fnref.function(ref) is ft.wrapped


def test_each_end_keeps_a_bounded_number_of_functions(monkeypatch):
    many = types.ModuleType("safepool_test_many_functions")
    for i in range(3 * _fnref._KEEP):
        exec(f"def f{i}(): return {i}", many.__dict__)
        getattr(many, f"f{i}").__module__ = many.__name__
    monkeypatch.setitem(sys.modules, many.__name__, many)
    monkeypatch.setattr(_fnref, "_functions", {})
    refs = _fresh_references()
    for i in range(3 * _fnref._KEEP):
        fn = getattr(many, f"f{i}")
        assert refs.reference(fn) is not None
        assert _fnref.function(pickle.dumps(fn, 5)) is fn
        assert len(refs._kept) <= _fnref._KEEP and len(_fnref._functions) <= _fnref._KEEP



# ------------------------------------------------------------- map chunks


@pytest.mark.parametrize("runner, calls, first", [
    (_transport.run_chunk_single, (1, 2, 3), _transport._CHUNK_SINGLE),
    (_transport.run_chunk, ((1,), (2,), (3,)), _transport._CHUNK),
], ids=["single", "tuples"])
def test_a_chunk_of_a_top_level_function_sends_the_function_by_reference(runner, calls, first):
    """A ``map`` chunk is ``runner(fn, calls)``: its ``fn``, not only the runner, goes
    by reference, so neither end looks ``fn`` up by name for each chunk."""
    pickler = _transport.CallPickler()
    payload = pickler.dumps_chunk(runner, (ft.original, calls))
    assert payload[:1] == first
    assert _transport.load_call(payload) == (runner, (ft.original, calls), {})
    assert runner(*_transport.load_call(payload)[1]) == [("original", i) for i in (1, 2, 3)]


@pytest.mark.parametrize("fn", [functools.partial(ft.original), len, ft.Holder().method],
                         ids=["partial", "builtin", "bound"])
def test_a_chunk_of_any_other_callable_is_pickled_as_a_call_of_its_runner(fn):
    pickler = _transport.CallPickler()
    payload = pickler.dumps_chunk(_transport.run_chunk_single, (fn, ("ab",)))
    assert payload[:1] == _transport._BY_REF  # the runner by reference, fn pickled
    runner, args, kwargs = _transport.load_call(payload)
    assert runner is _transport.run_chunk_single and kwargs == {}
    assert runner(*args) == [fn("ab")]


def test_a_chunk_whose_function_was_rebound_in_the_parent_fails_as_without_keeping(
    make_pool, monkeypatch
):
    """As without references: the chunk cannot be pickled, so its call is sent alone,
    and fails with the PicklingError that pickling it afresh raises."""
    pool = make_pool(1)
    kept = ft.original
    assert list(pool.map(kept, [1, 2], chunksize=2)) == [("original", 1), ("original", 2)]
    monkeypatch.setattr(ft, "original", ft.replacement)
    with pytest.raises(safepool.PicklingError, match="not the same object"):
        list(pool.map(kept, [3], chunksize=2))
    monkeypatch.undo()
    assert list(pool.map(kept, [5, 6], chunksize=2)) == [("original", 5), ("original", 6)]


def test_a_chunk_finds_a_function_rebound_in_the_worker(make_pool):
    pool = make_pool(1)
    assert list(pool.map(ft.original, [1, 2], chunksize=2)) == [("original", 1), ("original", 2)]
    pool.submit(ft.replace_original_here).result(timeout=30)
    assert list(pool.map(ft.original, [3, 4], chunksize=2)) == [
        ("replacement", 3), ("replacement", 4)]
