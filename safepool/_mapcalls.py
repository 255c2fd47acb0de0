"""How a ``map``'s calls reach the engine: [`MapCalls`][safepool._mapcalls.MapCalls].

A map hands its calls (or chunks of calls) to one ``MapCalls``, which the
iterator of its results keeps (``safepool._map``, ``safepool._aio``):

* ``many``: the calls a map submits when it is called, in batches that grow
  from one call to ``_BATCH_MAX`` (one lock and one wake-up of the manager
  thread per batch, and the first call starts at once);
* ``one``: one more call, each time a result is taken (``buffersize``).

A chunk that cannot be pickled as a whole is sent call by call instead, so
that only the call that cannot be pickled fails.

On the local engine the calls go unpickled: its manager thread pickles each
as it sends it, as the stdlib's feeder thread does, so the first calls run
while the caller is still queueing the rest. A call that cannot be pickled
fails its future with the ``PicklingError``; a chunk is split by the manager,
its future resolving to a ``SplitChunk`` of its calls' futures, which the
iterator hands out in its place. With OpenTelemetry in use (the call is
traced as it is pickled) or on a cluster, each call is pickled in the caller,
through ``Executor._submit``, and a chunk split there at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from safepool._errors import PicklingError
from safepool._future import SafeFuture
from safepool._tracing import TaskSpan, dumps_traced
from safepool._transport import DeferredCall, SplitChunk, run_chunk, run_chunk_single

if TYPE_CHECKING:
    from safepool._executor import Executor
    from safepool._map import Submitted
    from safepool._progress import ProgressBar

__all__ = ["MapCalls"]

#: The most calls queued under one lock acquisition and one wake-up.
_BATCH_MAX = 64


class MapCalls:
    """Submits the calls of one ``map`` (or ``map_async``) to ``executor``.

    ``chunked``: each call is a chunk (a tuple of calls), run by one task whose
    result is the list of their results; ``single``: the map is over one
    iterable, so a call (in a chunk) is its argument, not a 1-tuple.
    ``timeout`` is the per-task timeout (already resolved: the executor's, the
    function's, or an ``options()`` view's). Holds ``executor`` strongly: the
    results' iterator keeps it alive.
    """

    def __init__(
        self, executor: Executor, fn: Callable[..., Any], *, chunked: bool, single: bool,
        timeout: float | None, bar: ProgressBar | None,
        placement: Mapping[str, float] | None,
    ) -> None:
        self._executor = executor
        self._fn = fn
        self._chunked = chunked
        self._single = single
        self._timeout = timeout
        self._bar = bar
        self._placement = placement
        unpickled = executor._submit_unpickled
        self._unpickled = unpickled if placement is None else None

    def many(self, calls: Any) -> list[Submitted]:
        """Submit every call of the iterable ``calls``, in order; what each gave."""
        submitted: list[Submitted] = []
        size = 1
        batch: list[Any] = []
        for call in calls:
            batch.append(call)
            if len(batch) >= size:
                submitted += self._batch(batch)
                batch = []
                size = min(size * 2, _BATCH_MAX)
        if batch:
            submitted += self._batch(batch)
        return submitted

    def one(self, call: Any) -> Submitted:
        """Submit one call (or chunk)."""
        return self._batch([call])[0]

    def _split(self, calls: tuple[Any, ...]) -> list[Future[Any]]:
        """A chunk that could not be pickled as a whole, sent call by call: only the call
        that cannot be pickled fails, and the calls before it deliver their results."""
        ex = self._executor
        return [self._counted(ex._submit(self._fn, (one,) if self._single else one, {},
                                         self._timeout, None, self._placement), 1)
                for one in calls]

    def _batch(self, calls: list[Any]) -> list[Submitted]:
        if self._unpickled is not None and "opentelemetry.trace" not in sys.modules:
            return self._queue_unpickled(calls)
        return [self._pickled(call) for call in calls]

    def _queue_unpickled(self, calls: list[Any]) -> list[Submitted]:
        assert self._unpickled is not None
        ex = self._executor
        fn = self._fn
        timeout = self._timeout
        single = self._single
        runner = run_chunk_single if single else run_chunk
        report = ex._log_unretrieved
        queued: list[tuple[SafeFuture[Any], DeferredCall]] = []
        for call in calls:
            future: SafeFuture[Any] = ex._future_class()
            if report:
                future._report_unretrieved = True
                future._fn = fn  # named in the report, if there is one
            if self._chunked:  # the task is runner(fn, chunk)
                queued.append((future, DeferredCall(runner, (fn, call), {}, chunk=True,
                                                    single=single)))
            else:
                queued.append((future, DeferredCall(fn, call, {}, chunk=False)))
        self._unpickled(queued, timeout)
        bar = self._bar
        if bar is not None:
            for (future, _), call in zip(queued, calls, strict=True):
                n = len(call) if self._chunked else 1
                future.add_done_callback(partial(_count_unless_split, bar, n))
        return [future for future, _ in queued]

    def _pickled(self, call: Any) -> Submitted:
        """Pickle one call (or chunk) here and submit it: on a cluster, or traced."""
        ex = self._executor
        if not self._chunked:
            return self._counted(
                ex._submit(self._fn, call, {}, self._timeout, None, self._placement), 1)
        runner = partial(run_chunk_single if self._single else run_chunk, self._fn)
        traced: TaskSpan | None = None
        try:
            if "opentelemetry.trace" in sys.modules:  # in use: trace the chunk (_tracing)
                payload, traced = dumps_traced(ex._engine.dumps, runner, (call,), {}, self._timeout,
                                               named=self._fn, chunk_size=len(call))
            else:
                payload = ex._engine.dumps(runner, (call,), {})
        except PicklingError:
            return self._split(call)
        future = ex._submit(runner, (call,), {}, self._timeout, payload, self._placement, traced)
        return self._counted(future, len(call))

    def _counted(self, future: SafeFuture[Any], n: int) -> Future[Any]:
        if self._bar is not None:
            future.add_done_callback(partial(self._bar.on_done, n=n))
        return future


def _count_unless_split(bar: ProgressBar, n: int, future: Future[Any]) -> None:
    """A chunk's done-callback: count its calls; if it was split (it could not be
    pickled as a whole), count each of its calls as it ends instead."""
    # Read without result(), which would count as retrieving an error (see _progress._failed).
    split = getattr(future, "_result", None)
    if type(split) is SplitChunk:
        for one in split.futures:
            one.add_done_callback(partial(bar.on_done, n=1))
    else:
        bar.on_done(future, n)
