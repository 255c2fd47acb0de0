"""``Executor.map``: submit calls (at most ``buffersize`` ahead) and hand back results in order.

The semantics are those of Python 3.14's ``Executor.map``, on every version:

* ``buffersize=None``: every call is submitted when ``map`` is called, so the
  whole input is read at once.
* ``buffersize=b``: ``map`` reads and submits the first ``b`` calls (or
  chunks), and each ``next()`` submits one more, if input remains, before it
  waits for the oldest. An endless input works.
* ``timeout`` is one deadline for the whole iteration, counted from the
  ``map`` call. When it passes, or a result raises, or the iterator is closed
  (even before its first result), the calls not yet started are cancelled.

Unlike the stdlib's, the iterator holds a strong reference to whatever submits
the calls (an executor, an ``options()`` view, a progress wrapper): with only
a weak one, as in 3.14, a short-lived view would be collected mid-iteration and
the results silently cut short.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures._base import FINISHED
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, cast

from safepool._transport import SplitChunk

if TYPE_CHECKING:
    from safepool._progress import ProgressBar

__all__ = [
    "FlatMapIterator",
    "MapIterator",
    "Submitter",
    "check_buffersize",
    "chunked",
    "known_length",
    "map_results",
    "submit_first",
]



def check_buffersize(buffersize: Any) -> None:
    """Refuse a ``buffersize`` the stdlib refuses, with the stdlib's messages."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


def chunked(calls: Iterator[tuple[Any, ...]], size: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    """The argument tuples in ``calls``, ``size`` at a time (the last chunk may be shorter)."""
    while chunk := tuple(islice(calls, size)):
        yield chunk


def known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many calls ``zip(*iterables)`` makes, if every input has a length."""
    try:
        return min((len(it) for it in iterables), default=0)  # type: ignore[arg-type]
    except TypeError:
        return None


#: What submitting one call (or chunk) of a map gives: its future, or, for a chunk that
#: could not be pickled as a whole and was sent call by call, the future of each call.
Submitted = Future[Any] | list[Future[Any]]


class Submitter(Protocol):
    """What submits a map's calls (``safepool._mapcalls.MapCalls``)."""

    def many(self, calls: Iterator[Any]) -> list[Submitted]:
        """Submit every call in ``calls``, in order (in batches)."""

    def one(self, call: Any) -> Submitted:
        """Submit one call (or chunk)."""


def map_results(
    submit: Submitter,
    calls: Iterator[Any],
    *,
    timeout: float | None,
    buffersize: int | None,
    chunked: bool = False,
    bar: ProgressBar | None = None,
) -> Iterator[Any]:
    """Submit ``calls`` with ``submit`` as ``buffersize`` allows, now; the results, lazily.

    ``chunked``: each call is a chunk whose result is a list, handed out item by
    item. A chunk that could not be pickled as a whole was sent call by call
    (its future's result is a ``SplitChunk``): its calls' results are handed
    out one by one, each in a list of one.
    ``bar`` is closed when the iteration ends. Exceptions from ``submit``
    (the executor was shut down, say) propagate from this call for the first
    calls, and from ``next()`` for later ones.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending, more = submit_first(submit, calls, buffersize, bar)
    results = MapIterator(pending, submit, more, deadline, chunked, bar)
    if not chunked:
        return results
    flat = cast("FlatMapIterator", FlatMapIterator.from_iterable(results))
    flat.chunks = results
    return flat


def submit_first(
    submit: Submitter,
    calls: Iterator[Any],
    buffersize: int | None,
    bar: ProgressBar | None,
) -> tuple[deque[Submitted], Iterator[Any] | None]:
    """Submit what a map submits when it is called: every call, or the first ``buffersize``.

    Returns the submitted calls and the calls left to submit one per result
    taken (``None`` without a ``buffersize``). If submitting raises, ``bar``
    is closed and the error propagates.
    """
    try:
        if buffersize is None:
            return deque(submit.many(calls)), None
        return deque(submit.many(islice(calls, buffersize))), calls
    except BaseException:
        if bar is not None:
            bar.close()
        raise


class MapIterator(Iterator[Any]):
    """The results of a ``map`` call, in order (with chunks: each chunk's list of results).

    ``close()``, even before the first result, cancels the calls that have
    not started; the ones running finish. Dropping it cancels nothing, as with
    the stdlib: ``pool.map(fn, items)`` run only for its side effects, then
    ``shutdown()``, runs every call.
    """

    def __init__(
        self,
        pending: deque[Submitted],
        submit: Submitter,
        more: Iterator[Any] | None,
        deadline: float | None,
        chunked: bool,
        bar: ProgressBar | None,
    ) -> None:
        self._pending = pending
        self._submit = submit
        self._more = more
        self._deadline = deadline
        self._chunked = chunked
        self._bar = bar
        self._split: deque[Future[Any]] = deque()  # a chunk sent call by call, being handed out

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        try:
            if self._split:
                return self._one_of_split()
            while self._pending:
                if self._more is not None:
                    call = next(self._more, _END)
                    if call is _END:
                        self._more = None
                    else:
                        self._pending.append(self._submit.one(call))
                head = self._pending.popleft()
                if isinstance(head, list):  # a chunk that could not be pickled as a whole
                    self._split.extend(head)
                    return self._one_of_split()
                value = _result_or_cancel(head, self._deadline)
                if type(value) is not SplitChunk:
                    return value
                self._split.extend(value.futures)  # split by the manager thread
                return self._one_of_split()
        except BaseException:
            self.close()
            raise
        self.close()
        raise StopIteration

    def _one_of_split(self) -> Any:
        value = _result_or_cancel(self._split.popleft(), self._deadline)
        return [value] if self._chunked else value

    def close(self) -> None:
        """Stop: cancel the calls not started yet (idempotent)."""
        self._more = None
        while self._split:
            self._split.popleft().cancel()
        while self._pending:
            head = self._pending.popleft()
            for future in with_split_calls(head if isinstance(head, list) else (head,)):
                future.cancel()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class FlatMapIterator(itertools.chain):  # type: ignore[type-arg]
    """The results of a ``map`` with chunks, item by item, at C speed (``itertools.chain``
    over the chunks' lists); ``close()`` as [`MapIterator`][]'s."""

    chunks: MapIterator

    def close(self) -> None:
        """Stop: cancel the calls not started yet (idempotent)."""
        self.chunks.close()


_END: Any = object()


def with_split_calls(futures: Iterable[Future[Any]]) -> list[Future[Any]]:
    """``futures``, each followed by its calls' futures if it is a chunk the manager split
    (its result a ``SplitChunk``): so that stopping a map stops those calls too, which
    are queued in the pool, not in the map. A chunk still running (being pickled, or
    in a worker) gets a done-callback that cancels its calls if it is split after all."""
    out: list[Future[Any]] = []
    for future in futures:
        out.append(future)
        split = getattr(future, "_result", None)  # not result(): it may be running
        if type(split) is SplitChunk:
            out += split.futures
        elif not future.done():
            future.add_done_callback(_cancel_split_calls)
    return out


def _cancel_split_calls(future: Future[Any]) -> None:
    split = getattr(future, "_result", None)
    if type(split) is SplitChunk:
        for one in split.futures:
            one.cancel()


def _result_or_cancel(future: Future[Any], deadline: float | None) -> Any:
    try:
        return future.result(None if deadline is None else deadline - time.monotonic())
    finally:
        # Only a future that has not started: a timeout or an interrupt. A finished
        # one (nearly every one: its state is final) is not asked, which takes its lock.
        if future._state != FINISHED:
            future.cancel()
        del future
