"""asyncio: awaitable calls whose cancellation stops the work, async shutdown and results.

The executor's machinery is threads and pipes; an event loop only ever waits
on it, never blocks for it::

    event loop thread                         helper thread            manager
    ─────────────────                         ─────────────            ───────
    await pool.run(fn)   ── submit() ─────────────────────────────────► worker
      │  an asyncio future chained to the call's future
      │  (its done-callback wakes the loop: call_soon_threadsafe)
      ▼
    cancelled (task.cancel(), asyncio.timeout(), a failing TaskGroup)
      ├─ not started: future.cancel(); it never runs
      └─ running:     stop_task() ────────────► stop request ─────────► SIGTERM the
                      awaited, not blocking     (waits until the         task's tree,
                      the loop                   manager took it)        new worker

    async with pool: / await pool.aclose()
      └─ shutdown(wait=True) ─────────────────► waits for the tasks
         awaited; the loop serves other coroutines meanwhile

* **The event loop** submits (pickling happens there, as with ``submit``) and
  awaits asyncio futures chained to the calls' futures, as
  ``loop.run_in_executor`` does. It never waits on a lock the manager holds.
* **A helper thread**, one per blocking step (a ``stop_task`` or a shutdown),
  does what may block: stopping a running task waits until the manager has
  taken the request, and on a cluster it is a round trip to the nodes.
* **The manager** is the executor's own (see ``safepool._local.pool``): it
  signals the task's process tree and starts a replacement worker.

Stopping is awaited before the cancellation is re-raised, so by the time a
cancelled ``await pool.run(...)`` raises ``CancelledError`` its worker has been
signalled. A second cancellation while that is under way does not interrupt
the stop: it goes on in its thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from safepool._map import Submitted, Submitter, with_split_calls
from safepool._transport import SplitChunk

if TYPE_CHECKING:
    from safepool._progress import ProgressBar

__all__ = [
    "AsyncMapIterator", "as_completed_async", "call_result", "map_results_async", "stop_all",
    "to_thread",
]

T = TypeVar("T")
_log = logging.getLogger("safepool")


def to_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``fn`` in a new daemon thread; an asyncio future of its outcome.

    Not the loop's default executor: at the end of ``asyncio.run`` that is
    shut down while cancelled tasks still clean up, and a stop must still run.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if outcome.done():  # the awaiting side gave up (cancelled)
            return
        if ok:
            outcome.set_result(value)
        else:
            outcome.set_exception(value)

    def target() -> None:
        try:
            value: Any = fn()
            ok = True
        except BaseException as exc:  # delivered to the awaiting coroutine
            value, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop closed meanwhile: nobody is waiting
            pass

    threading.Thread(target=target, name="safepool-asyncio", daemon=True).start()
    return outcome


async def stop_all(stop_task: Callable[[cf.Future[Any]], bool],
                   futures: Iterable[cf.Future[Any]]) -> None:
    """Make sure none of ``futures`` runs on: cancel the ones not started, stop the rest.

    Cancelling is immediate. Stopping running ones (``stop_task``) happens in a
    helper thread and is awaited; a cancellation of this coroutine meanwhile
    does not interrupt it.
    """
    running = [f for f in futures if not f.cancel() and not f.done()]
    if not running:
        return

    def stop() -> None:
        for future in running:
            try:
                stop_task(future)
            except Exception:  # a cluster that went away: the others are still stopped
                _log.warning("could not stop %r", future, exc_info=True)

    stopping = to_thread(stop)
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        pass  # cancelled again: the caller is raising CancelledError anyway


async def call_result(stop_task: Callable[[cf.Future[Any]], bool], future: cf.Future[T]) -> T:
    """The outcome of ``future``, awaited; if the awaiting task is cancelled, stop the call."""
    waiter = asyncio.wrap_future(future)
    try:
        return await waiter
    except asyncio.CancelledError:
        await stop_all(stop_task, (future,))
        raise


async def _outcome(future: cf.Future[Any], deadline: float | None) -> Any:
    waiter = asyncio.wrap_future(future)
    if deadline is None:
        return await waiter
    try:
        done, _ = await asyncio.wait((waiter,), timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            raise cf.TimeoutError("map_async(): the results were not ready within its timeout")
        return waiter.result()
    finally:
        # Given up on (timeout, cancellation): its call is about to be stopped, and the
        # TaskStoppedError must not land on a future nobody reads (asyncio would log it).
        waiter.cancel()


def map_results_async(
    stop_task: Callable[[cf.Future[Any]], bool],
    submit: Submitter,
    pending: deque[Submitted],
    more: Iterable[Any] | None,
    *,
    timeout: float | None,
    chunked: bool,
    bar: ProgressBar | None,
) -> AsyncIterator[Any]:
    """The results of calls already submitted (``pending``), in order, as an async iterator.

    ``more``: calls left to submit, one each time a result is taken (a map's
    ``buffersize``). When the iteration ends early, by a ``break``, an
    exception, a cancellation or its ``timeout``, the calls not started are
    cancelled and the running ones stopped. A chunk that could not be pickled as
    a whole was sent call by call (its result is a ``SplitChunk``): its calls'
    results are handed out one by one.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    rest = None if more is None else iter(more)

    async def results() -> AsyncGenerator[Any, None]:
        nonlocal rest
        current: list[cf.Future[Any]] = []
        finished = False
        try:
            while pending:
                if rest is not None:
                    call = next(rest, _END)
                    if call is _END:
                        rest = None
                    else:
                        pending.append(submit.one(call))
                head = pending.popleft()
                split = isinstance(head, list)  # a chunk sent call by call
                current = list(head) if isinstance(head, list) else [head]
                while current:
                    value = await _outcome(current[0], deadline)
                    if type(value) is SplitChunk:  # split by the manager thread
                        current, split = list(value.futures), True
                        continue
                    current.pop(0)
                    if chunked and not split:
                        for item in value:
                            yield item
                    else:
                        yield value
            finished = True
        finally:
            rest = None
            if bar is not None:
                bar.close()
            if not finished:
                left = with_split_calls(current) + _futures_of(pending)
                pending.clear()
                await stop_all(stop_task, left)

    return AsyncMapIterator(results(), stop_task, pending, bar)


def _futures_of(pending: Iterable[Submitted]) -> list[cf.Future[Any]]:
    """Every future in ``pending``, with the calls of chunks the manager split."""
    left: list[cf.Future[Any]] = []
    for head in pending:
        left.extend(head if isinstance(head, list) else (head,))
    return with_split_calls(left)


class AsyncMapIterator(AsyncIterator[Any]):
    """What ``map_async`` returns: its results, in order, for ``async for``.

    ``aclose()`` stops what is left, even before the first result (an async
    generator would not run its cleanup then). Dropped unread and unclosed, it
    cancels the calls not started; the running ones finish, as with ``map``.
    """

    def __init__(self, results: AsyncGenerator[Any, None],
                 stop_task: Callable[[cf.Future[Any]], bool],
                 pending: deque[Submitted], bar: ProgressBar | None) -> None:
        self._results = results
        self._stop_task = stop_task
        self._pending = pending
        self._bar = bar
        self._started = False

    def __aiter__(self) -> AsyncMapIterator:
        return self

    async def __anext__(self) -> Any:
        self._started = True
        return await self._results.__anext__()

    async def aclose(self) -> None:
        """Stop: cancel the calls not started and stop the running ones (idempotent)."""
        if not self._started:
            self._started = True
            if self._bar is not None:
                self._bar.close()
            left = _futures_of(self._pending)
            self._pending.clear()
            await stop_all(self._stop_task, left)
        await self._results.aclose()

    def __del__(self) -> None:
        if not self._started:  # no event loop to wait on here: cancel what has not started
            for future in _futures_of(self._pending):
                future.cancel()


async def as_completed_async(
    futures: Iterable[cf.Future[T]], timeout: float | None = None
) -> AsyncIterator[cf.Future[T]]:
    """Yield ``futures`` as they finish (done, failed or cancelled), without blocking the loop.

    The asyncio counterpart of `concurrent.futures.as_completed`: any
    `concurrent.futures.Future`, from safepool or not, mixed freely; duplicates
    are yielded once; the ones already done come first. ``timeout`` is one
    deadline for the whole iteration: when it passes, ``TimeoutError`` is
    raised, naming how many are unfinished. Stopping early leaves the futures
    alone (they are not cancelled).

    Raises:
        TimeoutError: the deadline passed first (``concurrent.futures.TimeoutError``,
            which is the built-in ``TimeoutError`` on Python 3.11+).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    unique = list(dict.fromkeys(futures))
    loop = asyncio.get_running_loop()
    finished: asyncio.Queue[cf.Future[T]] = asyncio.Queue()

    def arrived(future: cf.Future[T]) -> None:
        try:
            loop.call_soon_threadsafe(finished.put_nowait, future)
        except RuntimeError:  # the loop closed: nobody is iterating any more
            pass

    for future in unique:
        future.add_done_callback(arrived)
    for _ in unique:
        if deadline is None:
            yield await finished.get()
            continue
        try:
            yield await asyncio.wait_for(finished.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            left = sum(1 for f in unique if not f.done())
            raise cf.TimeoutError(f"{left} (of {len(unique)}) futures unfinished") from None


_END: Any = object()
