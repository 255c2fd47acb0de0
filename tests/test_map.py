"""``map``: Python 3.14's ``buffersize`` on every supported version, with chunks, views and
progress bars, and without 3.14's weak-reference trap."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import io
import itertools
from collections.abc import Iterator
from operator import add

import pytest

import safepool
from safepool import _progress
from tests import tasks


class Counted:
    """An iterator that counts how many items were taken from it."""

    def __init__(self, items: Iterator[int]) -> None:
        self._items = items
        self.taken = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> int:
        item = next(self._items)
        self.taken += 1
        return item


@pytest.mark.parametrize(
    ("buffersize", "error", "match"),
    [
        ("2", TypeError, "buffersize must be an integer or None"),
        (2.0, TypeError, "buffersize must be an integer or None"),
        (0, ValueError, r"buffersize must be None or > 0"),
        (-1, ValueError, r"buffersize must be None or > 0"),
    ],
)
def test_bad_buffersize_is_refused_by_map_itself(buffersize, error, match):
    pool = safepool.Executor(1)
    try:
        items = Counted(iter(range(4)))
        with pytest.raises(error, match=match):
            pool.map(str, items, buffersize=buffersize)
        assert items.taken == 0
        assert pool._processes == {}  # nothing was submitted
    finally:
        pool.shutdown()


def test_buffersize_reads_ahead_that_many_calls_and_one_more_per_result(make_pool):
    pool = make_pool(2)
    items = Counted(iter(range(10)))
    results = pool.map(tasks.add, items, buffersize=3)
    assert items.taken == 3  # submitted when map is called, before the first next()
    for n in range(10):
        assert next(results) == n
        assert items.taken == min(3 + n + 1, 10)
    assert next(results, None) is None


def test_buffersize_counts_chunks(make_pool):
    pool = make_pool(2)
    items = Counted(iter(range(20)))
    results = pool.map(tasks.add, items, chunksize=4, buffersize=2)
    assert items.taken == 8  # 2 chunks of 4
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]  # the first chunk's results
    assert items.taken == 12  # taking them submitted one more chunk
    assert list(results) == list(range(4, 20))


def test_buffersize_true_means_one(make_pool):
    pool = make_pool(1)
    items = Counted(iter(range(4)))
    results = pool.map(tasks.add, items, buffersize=True)
    assert items.taken == 1
    assert list(results) == [0, 1, 2, 3]


def test_buffersize_works_on_endless_and_multiple_inputs(make_pool):
    pool = make_pool(2)
    results = pool.map(add, itertools.count(), itertools.count(), buffersize=2)
    assert [next(results) for _ in range(5)] == [0, 2, 4, 6, 8]
    results.close()
    assert list(pool.map(str, [], buffersize=2)) == []
    assert list(pool.map(str, buffersize=2)) == []


def test_without_buffersize_the_whole_input_is_read_at_once(make_pool):
    pool = make_pool(1)
    items = Counted(iter(range(6)))
    results = pool.map(tasks.add, items)
    assert items.taken == 6
    assert list(results) == list(range(6))


def test_a_buffered_map_left_unread_reads_no_more_than_the_buffer(method):
    """CPython's test_map_buffersize_when_buffer_is_full, with a check of its own."""
    items = iter(range(4))
    with safepool.Executor(1, method) as pool:
        pool.map(str, items, buffersize=2)
    assert next(items) == 2


def test_closing_the_iterator_cancels_the_calls_not_started(make_pool, fifo):
    pool = make_pool(1)
    results = pool.map(tasks.note_start_then_sleep, [fifo.path] * 4, ["a", "b", "c", "d"],
                       [0.3, 0, 0, 0], buffersize=3)
    fifo.line()  # "a" is running
    results.close()  # before its first result, so not a generator's close()
    pool.shutdown()
    assert pool.stats().cancelled == 2  # "b" and "c"; "d" was never read
    assert fifo.pending() == ""  # neither of them started


def test_a_map_never_iterated_still_runs_every_call(make_pool, fifo):
    """As with the stdlib: map() for side effects, then shutdown()."""
    pool = make_pool(1)
    pool.map(tasks.note_start_then_sleep, [fifo.path] * 3, ["a", "b", "c"], [0, 0, 0])
    gc.collect()
    pool.shutdown()
    assert pool.stats().completed == 3
    assert sorted(line.split()[0] for line in fifo.pending().splitlines()) == ["a", "b", "c"]


def test_a_failing_call_cancels_the_rest_as_the_stdlib_does(make_pool):
    pool = make_pool(1)
    results = pool.map(tasks.raise_value, ["boom", "b", "c"], buffersize=2)
    with pytest.raises(ValueError, match="boom"):
        next(results)
    assert next(results, None) is None


def test_a_view_made_for_one_map_call_delivers_every_result(make_pool):
    """3.14's map keeps only a weak reference to the executor: a short-lived view would be
    collected mid-iteration and the results cut short. safepool's iterator keeps it."""
    pool = make_pool(2)
    results = pool.options(timeout=30).map(tasks.add, range(12), buffersize=2)
    gc.collect()
    out = []
    for value in results:
        out.append(value)
        gc.collect()
    assert out == list(range(12))


def test_the_iterator_keeps_a_dropped_executor_alive_until_it_is_done(method):
    results = safepool.Executor(1, method).map(tasks.add, range(6), buffersize=2)
    gc.collect()  # the executor itself is unreachable but for the iterator
    assert list(results) == list(range(6))


def test_buffered_map_timeout_is_an_overall_deadline(make_pool):
    pool = make_pool(1)
    results = pool.map(tasks.pid_after, [0.05, 5, 5], timeout=1, buffersize=1)
    next(results)
    with pytest.raises(cf.TimeoutError):
        next(results)


@pytest.fixture
def bars(monkeypatch) -> list[_progress.ProgressBar]:
    """The progress bars made during the test (plain ones, drawn into a string)."""
    monkeypatch.setattr(_progress, "_tqdm_module", None)
    made = []
    original = _progress.ProgressBar.__init__

    def spy(self, total=None, desc=None, file=None):
        original(self, total, desc, io.StringIO())
        made.append(self)

    monkeypatch.setattr(_progress.ProgressBar, "__init__", spy)
    return made


def test_progress_with_an_endless_input_counts_without_a_total(make_pool, bars):
    pool = make_pool(2)
    results = pool.map(tasks.add, itertools.count(), buffersize=3, progress=True)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    results.close()
    (bar,) = bars
    assert bar.total is None
    pool.shutdown()  # the calls still running when the map was closed finish
    assert bar.done >= 5


def test_progress_with_a_sized_input_and_buffersize_knows_the_total(make_pool, bars):
    pool = make_pool(2)
    assert list(pool.map(tasks.add, range(9), chunksize=2, buffersize=2, progress=True)) == \
        list(range(9))
    (bar,) = bars
    assert (bar.total, bar.done) == (9, 9)


def test_a_chunked_map_closes_like_any_other(make_pool, fifo):
    pool = make_pool(1)
    results = pool.map(tasks.note_start_then_sleep, [fifo.path] * 6, list("abcdef"),
                       [0.3] * 6, chunksize=2, buffersize=3)
    fifo.line()  # the first chunk is running
    results.close()
    pool.shutdown()
    assert pool.stats().cancelled == 2  # the other two chunks never started
