"""The local engine's pool: one manager thread, one pipe per worker.

Data flow::

  caller threads                manager thread "safepool-manager"            worker processes
  --------------                ---------------------------------            ----------------
  submit(fn, *args, **kw)
    pickle (fn, args, kw)  ┐
    append to pending ─────┼─> wake pipe (one write per burst)
  map(fn, items)           │
    append calls, not yet  │
    pickled, in batches ───┤   epoll(wake pipe, worker pipes, worker pidfds,
                           │         timeout=earliest deadline)
                           │   dispatch: pending -> an IDLE worker ──pipe──> read, marks[0] = n,
                           │     (a map's call pickled here, as sent)        run fn(*args),
                           │     future RUNNING, timeout armed
                           │   prefetch: short tasks -> a BUSY worker's      send exactly one reply
                           │     pipe, several per write (they wait there)   (or SKIPPED if marked)
  future.result() <────────┴── replies (many per read): set_result /  <──pipe── (OK | ERR, trailer)
                                 set_exception; the next one in the pipe
                                 is running now
                               max_tasks reached: EXIT rides behind the ──> teardown, exit(0)
                                 last task; poison or memory: the worker
                                 exits by itself after its reply
                               replacement: started at once if workers
                                 hold no resources, else once it is gone
                               pidfd ready: worker died -> read what it
                                 sent; marks[0] says which task was
                                 running (WorkerCrashedError), the ones
                                 waiting behind it are re-sent elsewhere
                               deadline: task timeout -> fail the future,
                                 SIGTERM the worker's process tree, SIGKILL
                                 it after a grace period, without blocking
  parent dies (even SIGKILL) ── lifeline pipe EOF ──────────────────────────> worker kills its tree
                               (LOG, record) <──pipe── any worker thread logs
                                 -> thread "safepool-logs" runs the parent's
                                    handlers; a task that logged has its future
                                    resolved there too, after its records

Caller threads only append to ``pending`` under a lock and write one byte to
the wake pipe when the manager is not already woken; the first ``submit``
starts the manager thread. ``submit`` pickles its call first; ``map`` appends
its calls unpickled (``safepool._mapcalls``), and the manager pickles each as
it sends it, outside the lock. ``stop_task``, ``shutdown`` and ``stop`` likewise
leave the work to the manager and wait for it if they must (only ``kill_now``,
on a second Ctrl-C, signals workers itself).

The manager thread is the only one that touches workers and their pipes. Each
round of its loop (``_step``) handles stop requests, dispatches, starts the
workers that waiting work needs, waits in epoll until the earliest deadline,
then reads replies, reaps dead workers and fires the deadlines due. Its work
is split into parts, the mixins ``Pool`` is made of: ``dispatch`` (tasks out,
replies in), ``workers`` (start, retire, kill, reap), ``deadlines`` (timed
events), ``stopping`` (``stop_task``, ``stop()``, Ctrl-C) and ``failures``
(workers that cannot start, a broken pool); ``state`` holds the records and
declares what the parts share.

Each worker process (``safepool._worker``) runs the tasks sent to it strictly
in order; ``marks`` (``_marks``) is a page shared with it: it writes there the
number of each task it starts, and skips a task the parent marked as stopped.
So the parent always knows which task runs where, even after a kill: a
cancelled pending task never starts, a task never runs twice, and a worker's
death or kill can never corrupt shared state (there is none between workers).

The log thread ``safepool-logs`` (``safepool._logbridge``) runs the parent's
handlers on the records workers send, and resolves the future of a task that
logged, after its records.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import selectors
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from safepool import _transport
from safepool._context import THREAD_PREFIX
from safepool._future import SafeFuture, report_unretrieved
from safepool._local.deadlines import Deadlines
from safepool._local.dispatch import Dispatch
from safepool._local.failures import Failures
from safepool._local.state import WorkItem, _StopRequest, _Worker
from safepool._local.stopping import Stopping
from safepool._local.workers import Lifecycle
from safepool._logbridge import LogDispatcher
from safepool._proctree import ProcessTree
from safepool._resources import Resource
from safepool._stats import Counters, Stats, WorkerStats, rss_of, uptime_since

__all__ = ["Pool"]

#: How long the end of a pool waits for the parent's log handlers to catch up.
_LOG_DRAIN_TIMEOUT = 10.0


class Pool(Dispatch, Lifecycle, Deadlines, Stopping, Failures):
    """The state behind an [`Executor`][safepool.Executor], run by one manager thread.

    Each base is one part of the manager's work (see this module's docstring).
    """

    def __init__(
        self,
        *,
        context: BaseContext,
        max_workers: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_child: int | None,
        max_memory_per_child: int | None,
        kill_grace: float,
        exit_timeout: float,
        resources: tuple[Resource[Any], ...] = (),
        setup_backoff_max: float = 5.0,
        idle_timeout: float | None = None,
        start_timeout: float = 60.0,
        worker_logs: bool | logging.Logger = True,
        spare_workers: int = 0,
        spare_on_demand: bool = False,
    ) -> None:
        self.context = context
        self._log_target = worker_logs if isinstance(worker_logs, logging.Logger) else None
        self._logs = LogDispatcher(self._log_target) if worker_logs is not False else None
        self.counters = Counters()
        self._idle_timeout = idle_timeout
        self._start_timeout = start_timeout
        self._resources = resources
        self._backoff_max = setup_backoff_max
        self.max_workers = max_workers
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks_per_child
        self._max_memory = max_memory_per_child
        self._kill_grace = kill_grace
        self._exit_timeout = exit_timeout

        # Shared with caller threads, under _lock.
        self._lock = threading.Lock()
        self._pending: deque[WorkItem] = deque()
        self._shutdown = False
        self._stop_reason: str | None = None
        self._broken: Callable[[], BaseException] | None = None
        self._thread: threading.Thread | None = None
        # Set when the manager thread has finished. Waiting uses this, never
        # Thread.join(): on 3.11 a KeyboardInterrupt that interrupts join()
        # marks the still-running thread as stopped (bpo-45274), after which
        # join() returns at once.
        self._done = threading.Event()
        self._stop_requests: list[_StopRequest] = []
        self._manager_done = False  # under _lock: no stop request will be handled any more

        # Owned by the manager thread.
        self._workers: dict[int, _Worker] = {}  # by sentinel
        self._selector = selectors.DefaultSelector()
        self._idle: list[_Worker] = []
        # How long tasks take (moving average of what workers report): short tasks
        # are prefetched, so a worker never waits for the parent between them.
        self._avg_seconds = math.inf
        self._retry: deque[WorkItem] = deque()  # started items whose send failed
        self._call_pickler = _transport.CallPickler()  # map's calls, pickled as they are sent
        self._deadlines: list[tuple[float, int, int, Any, Any]] = []
        self._seq = itertools.count()
        self._boot_failures = 0
        self._last_boot_failure = ""
        # Resource setup failures: retry with a growing delay; fail fast meanwhile.
        self._backoff = 0.0
        self._retry_at = 0.0
        self._setup_error: Callable[[], BaseException] | None = None
        # Nothing in a worker holds outside connections: replacements need not wait.
        self._early_replacement = not resources and initializer is None
        # Ready workers kept beyond those running tasks, so that a worker recycled,
        # killed or crashed is replaced without waiting for a process to start;
        # on demand: one from the first time a worker is killed or crashes.
        self._spares = spare_workers
        self._spare_on_demand = spare_on_demand and not spare_workers
        self._stopping_handled = False

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # True from a caller's wake-up write until the manager drains the wake pipe:
        # a burst of submits costs one write, not one per submit.
        self._woken = False
        self._lifeline_r, self._lifeline_w = context.Pipe(duplex=False)
        _live_pools.add(self)

    # ------------------------------------------------------------------ callers

    #: Pickle a call for a worker (see ``safepool._transport.dumps_call``); the
    #: function itself, not a method that calls it: this runs for every task.
    dumps = staticmethod(_transport.pickle_call)

    future_class = SafeFuture

    def submit(
        self, future: SafeFuture[Any], payload: _transport.Payload, timeout: float | None,
        dask_resources: Mapping[str, float] | None = None, *, raw: bool = False,
    ) -> None:
        """Queue the pickled call ``payload``; raise if the pool no longer accepts work.

        ``raw=True``: the future's result is the worker's reply as it came,
        ``(kind, body, pid)`` with ``kind`` ``_transport.OK`` or ``ERR``, for a
        caller that passes it on unread (see ``safepool._dask``). Failures the
        parent itself decides (a timeout, a crash, a stop) are still exceptions.
        """
        self._queue((WorkItem(future, payload, timeout, raw),))

    def submit_unpickled(self, calls: list[tuple[SafeFuture[Any], _transport.DeferredCall]],
                         timeout: float | None) -> None:
        """Queue ``calls`` (each a future and its call), to be pickled by the manager
        thread when it sends them; one lock and one wake-up for them all.

        For ``map``: the caller's thread only queues the calls, and the first one
        starts while the rest are still being queued. A call that cannot be
        pickled fails its future with the [`PicklingError`][safepool.PicklingError]
        (a chunk is split into its calls instead: ``Dispatch._split``); raises as
        ``submit`` does if the pool accepts no work.
        """
        self._queue([WorkItem(future, b"", timeout, call=call) for future, call in calls])

    def _queue(self, items: Sequence[WorkItem]) -> None:
        failing: Callable[[], BaseException] | None = None
        with self._lock:
            if self._broken is not None or self._shutdown or _interpreter_exiting:
                self._check_accepting()  # raises, saying why
            for item in items:
                item.future._safepool = self
            self.counters.submitted += len(items)
            if self._setup_error is not None and self._failing_fast():
                self.counters.failed += len(items)
                failing = self._setup_error
            else:
                self._pending.extend(items)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"{THREAD_PREFIX}manager", daemon=True
                    )
                    self._thread.start()
        if failing is not None:  # outside the lock: done-callbacks may submit
            for item in items:
                item.future.set_exception(failing())
        elif not self._woken:  # (_wake's own test, first: a burst of submits wakes it once)
            self._wake()

    def reject(self, future: SafeFuture[Any], error: BaseException) -> None:
        """Fail a call that could not be sent (a pickling error), as a submitted task
        that failed; raise instead, as ``submit`` would, if the pool accepts no work."""
        with self._lock:
            self._check_accepting()
            future._safepool = self
            self.counters.submitted += 1
            self.counters.failed += 1
        future.set_exception(error)

    def _check_accepting(self) -> None:
        if self._broken is not None:
            raise self._broken()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Stop accepting work; optionally cancel what has not started; optionally wait."""
        with self._lock:
            self._shutdown = True
            cancelled = self._take_pending() if cancel_futures else []
            self.counters.cancelled += len(cancelled)
        for item in cancelled:
            item.future.cancel()
        self._finish(wait)

    def stop(self, reason: str, grace: float, wait: bool = True) -> None:
        """Cancel pending tasks, stop running ones (TaskStoppedError) and end all workers."""
        with self._lock:
            self._shutdown = True
            if self._stop_reason is None:
                self._stop_reason = reason
                self._kill_grace = min(self._kill_grace, grace)
            cancelled = self._take_pending()
            self.counters.cancelled += len(cancelled)
        for item in cancelled:
            item.future.cancel()
        self._finish(wait)

    def interrupt(self) -> None:
        """Ctrl-C while a caller waited on this pool: stop everything, fast.

        Running tasks get SIGTERM and ``kill_grace`` seconds before SIGKILL;
        idle workers get as long for their teardown. A second Ctrl-C meanwhile
        SIGKILLs every worker's process tree at once.
        """
        try:
            self.stop("the parent was interrupted (KeyboardInterrupt)", grace=self._kill_grace,
                      wait=False)
            # Two grace periods at most (teardown, then SIGTERM); the bound is a safety
            # net: workers still alive after it die with the parent (lifeline).
            self.join(timeout=2 * self._kill_grace + 1.0)
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            self.kill_now()

    def stop_task(self, future: SafeFuture[Any], reason: str) -> bool:
        """Stop one task: cancel it if pending, kill it (and its tree) if running.

        Returns True if the task will not finish on its own: it was cancelled,
        or its future failed with TaskStoppedError. False if it had finished.
        """
        if future.cancel():
            return True
        if future.done():
            return False
        request = _StopRequest(future, reason)
        with self._lock:
            if self._thread is None or self._manager_done:
                return False
            self._stop_requests.append(request)
        if threading.current_thread() is self._thread:  # a done-callback on the manager
            self._handle_stop_requests()
        else:
            self._wake()
            request.handled.wait()
        return request.stopped

    def kill_now(self) -> None:
        """SIGKILL every worker's process tree from the calling thread, without waiting."""
        self.stop("the pool was killed", grace=0.0, wait=False)
        for worker in list(self._workers.values()):
            ProcessTree(worker.pid).signal(signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the manager thread has finished (all workers gone)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._done.wait(timeout)

    @property
    def manager_thread(self) -> threading.Thread | None:
        """The manager thread, once the first task was submitted."""
        return self._thread

    def broken_reason(self) -> str | None:
        """Why the pool accepts no more work because it broke (not a shutdown), if it did."""
        make = self._broken
        return None if make is None else str(make())

    def processes(self) -> dict[int, BaseProcess]:
        """A snapshot of the live worker processes, by pid."""
        return {w.pid: w.process for w in list(self._workers.values())}

    def stats(self) -> Stats:
        """A snapshot of the workers and the totals (see [`Stats`][safepool.Stats])."""
        workers = list(self._workers.values())
        rows = []
        running = prefetched = 0
        for w in workers:
            if w.ps is None:
                try:
                    w.ps = psutil.Process(w.pid)
                except psutil.Error:
                    pass
            rows.append(WorkerStats(w.pid, w.state, w.tasks, rss_of(w.ps), uptime_since(w.started)))
            waiting = [item for item in tuple(w.inflight) if not item.settled]
            if waiting:
                running += 1
                prefetched += len(waiting) - 1
        queued = len(self._pending) + len(self._retry) + prefetched
        return Stats.of(self.counters, tuple(rows), queued, running)

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown

    def _finish(self, wait: bool) -> None:
        self._wake()
        if self._thread is None:
            self._close()
        elif wait:
            self.join()

    def _take_pending(self) -> list[WorkItem]:
        items = list(self._pending)
        self._pending.clear()
        return items

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):  # already awake, or closed after shutdown
            pass

    # ------------------------------------------------------------ manager loop

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # pragma: no cover - a bug here must not hang futures
            self._fail_everything(exc)
            raise
        finally:
            with self._lock:
                self._manager_done = True
            self._handle_stop_requests()  # the tasks they name have all finished
            self._close()
            self._done.set()

    def _step(self) -> bool:
        """One round of the manager loop; False once the pool is finished."""
        if self._stop_reason is not None and not self._stopping_handled:
            self._stop_running_tasks()
        if self._stop_requests:
            self._handle_stop_requests()
        self._dispatch()
        if self._shutdown:
            if self._finished():
                return False
            self._retire_idle_for_shutdown()
        self._start_workers()  # also after shutdown(): queued work still runs
        events = self._selector.select(self._until_next_deadline())
        dead = []
        for key, _ in events:
            if key.data is None:
                self._drain_wake()
            else:
                worker, is_conn = key.data
                if is_conn:
                    self._receive(worker)
                else:
                    dead.append(worker)
        for worker in dead:
            self._reap(worker)
        self._fire_deadlines()
        return True

    def _finished(self) -> bool:
        return not (self._pending or self._retry or self._workers)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        # After draining: a caller that still saw True queued its work before this
        # point, and the loop looks at the queues next; from now on callers write again.
        self._woken = False

    def _close(self) -> None:
        """Release the pool's own fds, and the application's objects it holds to start
        workers, once every worker is gone (futures keep the pool alive)."""
        with self._lock:
            self._shutdown = True
        # A multiprocessing Queue in initargs holds semaphores and a feeder thread.
        self._initializer, self._initargs, self._resources = None, (), ()
        if self._logs is not None:
            self._logs.close(timeout=_LOG_DRAIN_TIMEOUT)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        self._lifeline_r.close()
        self._lifeline_w.close()
        self._selector.close()
        _live_pools.discard(self)


# ---------------------------------------------------------------- process exit

_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_interpreter_exiting = False


def _exited_on_ctrl_c() -> bool:
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _at_exit() -> None:
    """Interpreter exit: finish the work of pools nobody shut down, as the stdlib does,
    unless the program is ending on Ctrl-C, which stops them at once; then log the
    failed futures still alive whose exception nobody retrieved."""
    global _interpreter_exiting
    _interpreter_exiting = True
    interrupted = _exited_on_ctrl_c()
    for pool in list(_live_pools):
        if interrupted:
            pool.interrupt()
        else:
            try:
                pool.shutdown(wait=True, cancel_futures=False)
            except KeyboardInterrupt:
                pool.interrupt()
    if not interrupted:
        report_unretrieved()


def _after_fork_in_child() -> None:
    # A process forked from the parent (not a worker) must not keep the
    # lifelines open, or workers would outlive the parent.
    for pool in list(_live_pools):
        try:
            pool._lifeline_w.close()
        except OSError:
            pass
    _live_pools.clear()


if hasattr(threading, "_register_atexit"):
    # Runs before threads are joined, like concurrent.futures' own hook.
    threading._register_atexit(_at_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
