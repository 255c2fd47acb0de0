"""The future safepool returns: a ``concurrent.futures.Future`` with three refinements.

* Ctrl-C while waiting on it (``result()``/``exception()``) stops its
  executor: pending futures are cancelled, running tasks stopped and the
  workers ended, and the KeyboardInterrupt then reaches the caller.
* ``cancel()`` of a pending future notifies ``wait``/``as_completed`` at once,
  not only when the executor gets round to dropping it.
* A failed future whose exception nobody retrieved (with ``result()`` or
  ``exception()``, or asyncio's ``_get_snapshot()`` on 3.15+) logs the error,
  with the child traceback, on the ``safepool`` logger when it is
  garbage-collected, or at interpreter exit if it is still alive then, like
  asyncio's "exception was never retrieved".
* A done-callback that raises anything, even ``SystemExit``, is logged and the
  other callbacks still run: callbacks run on safepool's manager thread, which
  must never die of one.

It is also lighter: its ``threading.Condition`` (8 of the 11 objects a stdlib
future is made of, each one tracked by the garbage collector) is made only
when something needs it: a thread waiting for the result, ``wait``,
``as_completed``, a done-callback, ``cancel()``. So are its lists of waiters
and of done-callbacks. The future's own reentrant lock is made at once and
guards its state throughout; the Condition, when made, is built on that lock.
"""

from __future__ import annotations

import logging
import threading
import weakref
from _thread import RLock as _RLock
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from functools import partial
from typing import Any, Protocol, TypeVar

from safepool._errors import TaskStoppedError
from safepool._transport import run_chunk, run_chunk_single

__all__ = ["SafeFuture", "report_unretrieved"]

T = TypeVar("T")

_log = logging.getLogger("safepool")
#: Where the stdlib logs a failing done-callback; safepool's futures log there too.
_callback_log = logging.getLogger("concurrent.futures")
#: Failed futures that must report an unretrieved exception, while they are alive.
_unretrieved: weakref.WeakSet[SafeFuture[Any]] = weakref.WeakSet()
_unretrieved_lock = threading.Lock()
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})


def label_of(fn: Any) -> str:
    """``module.qualname()`` of what a future runs, for messages about it."""
    if fn is None:
        return "task"
    if isinstance(fn, partial) and fn.func in (run_chunk, run_chunk_single) and fn.args:
        return f"a map() chunk of {label_of(fn.args[0])}"
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}()" if module else f"{name}()"


def report_unretrieved() -> None:
    """Log every live failed future whose exception was never retrieved (at interpreter exit)."""
    with _unretrieved_lock:
        futures = list(_unretrieved)
    for future in futures:
        future._report()


class _Interruptible(Protocol):
    """The future's view of its engine (``safepool._engine.Engine``)."""

    def interrupt(self) -> None: ...


class SafeFuture(Future[T]):
    """The future of a task submitted to a [`safepool.Executor`][safepool.Executor]."""

    #: The engine that runs it: Ctrl-C while waiting on the future stops that engine.
    _safepool: _Interruptible | None = None
    #: What ran, named in the unretrieved-exception report (e.g. ``app.jobs.fetch()``).
    _fn: Any = None
    #: Whether an exception nobody retrieves is logged (``Executor(log_unretrieved=)``).
    _report_unretrieved = False
    _retrieved = False
    #: The pid of the worker it was sent to last (None until then): the trace span's.
    _worker_pid: int | None = None

    #: The lists behind ``_waiters`` and ``_done_callbacks``, made when first needed
    #: (most futures get neither a waiter from ``wait`` nor a callback).
    _waiter_list: list[Any] | None = None
    _callback_list: list[Callable[[Future[T]], object]] | None = None

    def __init__(self) -> None:
        # Future.__init__ (the same on 3.10 to 3.15), but for the Condition (see
        # _condition) and the lists (above). The lock is made now (one object, not
        # tracked by the garbage collector) and guards the state from the start; the
        # Condition is built on it when needed. The state is set here, not read
        # through the class until it changes: every future's attributes are then
        # set in one order, which keeps them in CPython's compact per-class layout.
        self._state_lock = _RLock()
        self._cond: threading.Condition | None = None
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        """The stdlib's ``Future._waiters``, made on first use (by ``wait`` and
        ``as_completed``, under the future's lock)."""
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @property
    def _done_callbacks(self) -> list[Callable[[Future[T]], object]]:
        """The stdlib's ``Future._done_callbacks``, made on first use (under the lock)."""
        callbacks = self._callback_list
        if callbacks is None:
            callbacks = self._callback_list = []
        return callbacks

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        """The stdlib's ``Future._condition``, made on first use (by ``wait``, a waiting
        ``result()``, a callback, ``cancel()``) on the future's own lock, so that the
        state is guarded by the same lock before and after."""
        cond = self._cond
        if cond is None:
            with self._state_lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(self._state_lock)
        return cond

    def done(self) -> bool:
        # One attribute read, as the stdlib's under the lock: no Condition made to poll.
        return self._state in _DONE

    def result(self, timeout: float | None = None) -> T:
        if self._state == FINISHED and self._exception is None:
            # Final once set, so read without the lock, as CPython's own
            # Future._get_snapshot (3.15) does: most results are taken after
            # the task is done, and this is two lock operations fewer each.
            self._retrieved = True
            return self._result  # type: ignore[no-any-return]
        try:
            return super().result(timeout)
        except KeyboardInterrupt as exc:
            self._interrupted(exc)
            raise
        finally:
            self._mark_retrieved()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except KeyboardInterrupt as exc:
            self._interrupted(exc)
            raise
        finally:
            self._mark_retrieved()

    def set_result(self, result: T) -> None:
        # The stdlib's, minus the work that has no one to serve: most futures
        # have no thread waiting on them and no callback when their result
        # arrives (they are read after), and this runs for every task.
        with self._state_lock:
            refused = self._state in _DONE
            if not refused:
                self._result = result
                self._state = FINISHED
                if self._waiter_list:
                    for waiter in self._waiter_list:
                        waiter.add_result(self)
                cond = self._cond  # (None: nobody waits)
                if cond is not None and cond._waiters:  # type: ignore[attr-defined]
                    cond.notify_all()
        if refused:  # raised once the lock is released: repr takes the future's lock
            raise InvalidStateError(f"{self._state}: {self!r}")
        if self._callback_list:
            self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        super().set_exception(exception)
        if self._report_unretrieved and not self._retrieved:
            with _unretrieved_lock:
                _unretrieved.add(self)

    if hasattr(Future, "_get_snapshot"):  # 3.15+: how asyncio reads a future (gh-134173)

        def _get_snapshot(self) -> tuple[bool, bool, Any, BaseException | None]:
            snapshot: tuple[bool, bool, Any, BaseException | None]
            snapshot = super()._get_snapshot()  # type: ignore[misc]
            if snapshot[0]:
                self._mark_retrieved()
            return snapshot

    def _invoke_callbacks(self) -> None:
        # The stdlib catches only Exception: a callback raising SystemExit would
        # skip the other callbacks and end the manager thread that ran it.
        for callback in self._callback_list or ():
            try:
                callback(self)
            except KeyboardInterrupt:
                if threading.current_thread() is threading.main_thread():
                    raise  # cancel() in the main thread: possibly a real Ctrl-C
                _callback_log.exception("exception calling callback for %r", self)
            except BaseException:
                _callback_log.exception("exception calling callback for %r", self)

    def _mark_retrieved(self) -> None:
        # Read without the future's lock (one attribute read): this runs after
        # every result(), and only a failed future is in the registry.
        if self._retrieved or self._state not in _DONE:
            return
        self._retrieved = True
        if self._report_unretrieved and self._exception is not None:
            with _unretrieved_lock:
                _unretrieved.discard(self)

    def _report(self) -> None:
        """Log this future's exception if it failed and nobody retrieved it; only once."""
        if self._retrieved or not self._report_unretrieved:
            return
        self._retrieved = True
        exc = self._exception
        if exc is None or self.cancelled() or isinstance(exc, TaskStoppedError):
            return  # stopping a task (kill_workers(), Ctrl-C) is the caller's own doing
        try:
            _log.error(
                "exception in %s was never retrieved (future.result() or future.exception() "
                "was never called): %s: %s", label_of(self._fn), type(exc).__name__, exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        except Exception:  # pragma: no cover - logging torn down at interpreter exit
            pass

    def __del__(self) -> None:
        # _report's first test, inlined: every future ends here, and most were read.
        if not self._retrieved and self._report_unretrieved:
            self._report()

    def _interrupted(self, exc: KeyboardInterrupt) -> None:
        if exc is self._exception:  # the task itself raised it: that is its outcome
            return
        pool = self._safepool
        if pool is not None:
            pool.interrupt()

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self.notify_cancelled()
        return True

    def notify_cancelled(self) -> None:
        """Move a cancelled future to CANCELLED_AND_NOTIFIED, waking ``wait`` callers."""
        with self._condition:
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()

    def start(self) -> bool:
        """Mark the future running; False if it was cancelled (it must then not run)."""
        # All under the one (reentrant) lock: a cancel() between a look and the
        # notification would otherwise find the state changed under it.
        with self._state_lock:
            if self._state == PENDING:  # the common case, under one acquisition of the lock
                self._state = RUNNING
                return True
            if self._state == CANCELLED_AND_NOTIFIED:
                return False
            return self.set_running_or_notify_cancel()  # cancelled: notify; else it raises

