"""The process pool itself: one manager thread, one pipe per worker.

Data flow::

  caller threads                manager thread "safepool-manager"            worker processes
  --------------                ---------------------------------            ----------------
  submit(fn, *args, **kw)
    pickle (fn, args, kw)  ┐
    append to pending ─────┼─> wake pipe (one write per burst)
                           │   epoll(wake pipe, worker pipes, worker pidfds,
                           │         timeout=earliest deadline)
                           │   dispatch: pending -> an IDLE worker ──pipe──> read, marks[0] = n,
                           │     future RUNNING, timeout armed               run fn(*args),
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

Only the manager thread touches workers and their pipes; callers only append
to ``pending`` under a lock and write one byte to the wake pipe when the
manager is not already woken. Each worker runs the tasks sent to it strictly
in order; ``marks`` (``_marks``) is a page shared with it: it writes there the
number of each task it starts, and skips a task the parent marked as stopped.
So the parent always knows which task runs where, even after a kill: a
cancelled pending task never starts, a task never runs twice, and a worker's
death or kill can never corrupt shared state (there is none between workers).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import pickle
import selectors
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import InvalidStateError
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from safepool import _transport
from safepool._context import (
    THREAD_PREFIX,
    keep_global_start_method_unset,
    preload_in_forkserver,
)
from safepool._errors import (
    InitializerError,
    PoolStoppedError,
    RemoteError,
    ResourceSetupError,
    TaskStoppedError,
    TaskTimeoutError,
    WorkerCrashedError,
    describe_exitcode,
)
from safepool._future import SafeFuture, report_unretrieved
from safepool._logbridge import LogDispatcher, bridge_config
from safepool._marks import Marks
from safepool._pebble import start_process
from safepool._proctree import ProcessTree
from safepool._resources import Resource
from safepool._stats import Counters, Stats, WorkerStats, rss_of, uptime_since
from safepool._worker import worker_main

__all__ = ["Pool", "WorkItem"]

STARTING, IDLE, BUSY, RETIRING, KILLING = "starting", "idle", "busy", "retiring", "killing"
_TIMEOUT, _KILL, _EXIT_WAIT, _WAKE, _IDLE, _START = 0, 1, 2, 3, 4, 5
#: Workers that die before they are ready, in a row, before the pool gives up.
_MAX_BOOT_FAILURES = 3
#: Past this many entries (plus 8 per worker) the deadline heap drops stale ones.
_COMPACT_AT = 1024
#: How long the end of a pool waits for the parent's log handlers to catch up.
_LOG_DRAIN_TIMEOUT = 10.0
#: Prefetch (see ``Pool._dispatch``) only while tasks take less than this on average...
_PREFETCH_BELOW = 0.001
#: ...keeping about this many seconds of work, and at most _PREFETCH_MAX tasks, per worker...
_PREFETCH_WORTH = 0.002
_PREFETCH_MAX = 32
#: ...and only tasks whose pickled call is at most this big.
_PREFETCH_PAYLOAD = 16 * 1024
#: Weight of the newest task in the moving average of task durations.
_AVERAGE_WEIGHT = 0.1


class WorkItem:
    """One submitted call: its future, its pickled payload and its timeout."""

    __slots__ = ("future", "no", "payload", "raw", "settled", "timeout")

    def __init__(
        self, future: SafeFuture[Any], payload: bytes, timeout: float | None, raw: bool = False
    ) -> None:
        self.future = future
        self.payload = payload
        self.timeout = timeout
        # Resolve the future with the worker's reply as it came, (kind, body, pid),
        # not unpickled: a node pool on a cluster passes it on to the client as is.
        self.raw = raw
        self.no = 0  # its number on the worker it was sent to (the worker counts the same)
        self.settled = False  # its future was failed before the worker answered (timeout, stop)


class _StopRequest:
    """A caller's ``stop_task``, handled by the manager thread."""

    __slots__ = ("future", "handled", "reason", "stopped")

    def __init__(self, future: SafeFuture[Any], reason: str) -> None:
        self.future = future
        self.reason = reason
        self.stopped = False
        self.handled = threading.Event()


class _Worker:
    __slots__ = (
        "closing", "conn", "conn_open", "idle_armed", "idle_since", "inflight", "killed_for",
        "logged", "marks", "pid", "planned", "process", "ps", "reader", "ready", "sent", "sentinel",
        "started", "state", "tasks",
    )

    def __init__(self, process: BaseProcess, conn: Connection, marks: Marks) -> None:
        self.process = process
        self.pid: int = process.pid or 0
        self.conn = conn
        self.conn_open = True
        self.reader = _transport.FrameReader(conn.fileno())
        self.state = STARTING
        # Tasks sent and not yet answered, in the order the worker runs them. The
        # first (the head) is running; the others wait in the pipe (prefetch).
        self.inflight: deque[WorkItem] = deque()
        self.sent = 0  # tasks sent to it; each WorkItem.no is this count at its sending
        # Shared with the worker: [0] the number of the task it started last; the
        # other slots mark tasks stopped while they wait in its pipe (it skips them).
        self.marks = marks
        self.closing = False  # EXIT is in its pipe, behind its last task
        self.killed_for: str | None = None  # why the parent stopped it (stop_task, stop())
        self.tasks = 0
        self.idle_since = 0.0
        self.idle_armed = False  # an _IDLE deadline for it is in the heap
        self.logged = False  # its current task sent log records
        self.ready = False  # it got ready (reached IDLE) at least once
        self.planned = False  # the parent asked it to exit, or is killing it
        self.started = time.monotonic()
        self.ps: Any = None  # psutil.Process, made on the first stats() call
        self.sentinel: int = _open_sentinel(process)

    @property
    def head(self) -> WorkItem | None:
        """The task it is running (or about to run), if any."""
        return self.inflight[0] if self.inflight else None


def _open_sentinel(process: BaseProcess) -> int:
    """A pidfd where the OS has them, else multiprocessing's sentinel.

    A pidfd becomes readable when the worker exits even if a grandchild kept a
    copy of the pipe behind multiprocessing's own sentinel (``os.fork`` in a
    task does that), so a crash can never go unnoticed.
    """
    if hasattr(os, "pidfd_open") and process.pid:
        try:
            return os.pidfd_open(process.pid)
        except OSError:
            pass
    return process.sentinel


def _block_sigint_for_children(context: BaseContext) -> None:
    """Block SIGINT in this thread so the processes it starts boot with SIGINT blocked.

    A Ctrl-C can then never hit a worker before it ignores SIGINT itself. The
    stdlib's resource tracker, which spawn and forkserver start on first use,
    unblocks SIGINT in the calling thread after starting itself, so it is
    started first.
    """
    if context.get_start_method() != "fork":
        resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _set_result(future: SafeFuture[Any], value: Any) -> None:
    try:
        future.set_result(value)
    except InvalidStateError:  # pragma: no cover - resolved by a stop that raced the reply
        pass


def _set_exception(future: SafeFuture[Any], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except InvalidStateError:
        pass


def _summary(exc: BaseException) -> str:
    """``Type: message`` of a worker's exception, as the worker saw it."""
    if isinstance(exc, RemoteError):
        return f"{exc.type_name}: {exc.message}"
    return _transport.describe_error(exc)


def _decode_record(body: memoryview, pid: int) -> dict[str, Any]:
    """A worker's log record; a record that says why if it cannot be rebuilt here."""
    try:
        data = pickle.loads(body)
        if isinstance(data, dict):
            return data
        raise TypeError(f"expected a dict, got {type(data).__name__}")
    except BaseException as exc:  # an extra= value whose class raises while it is rebuilt
        return {
            "name": "safepool", "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": f"a log record from worker pid {pid} could not be rebuilt in the parent: "
                   f"{type(exc).__name__}", "args": None,
        }


class Pool:
    """The state behind an [`Executor`][safepool.Executor], run by one manager thread."""

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

    def dumps(self, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> bytes:
        """Pickle a call for a worker (see ``safepool._transport.dumps_call``)."""
        return _transport.dumps_call(fn, args, kwargs)

    def submit(
        self, future: SafeFuture[Any], payload: bytes, timeout: float | None, raw: bool = False
    ) -> None:
        """Queue the pickled call ``payload``; raise if the pool no longer accepts work.

        ``raw=True``: the future's result is the worker's reply as it came,
        ``(kind, body, pid)`` with ``kind`` ``_transport.OK`` or ``ERR``, for a
        caller that passes it on unread (see ``safepool._dask``). Failures the
        parent itself decides (a timeout, a crash, a stop) are still exceptions.
        """
        item = WorkItem(future, payload, timeout, raw)
        with self._lock:
            self._check_accepting()
            item.future._safepool = self
            self.counters.submitted += 1
            if self._failing_fast():
                assert self._setup_error is not None
                self.counters.failed += 1
                item.future.set_exception(self._setup_error())
                return
            self._pending.append(item)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"{THREAD_PREFIX}manager", daemon=True
                )
                self._thread.start()
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

    def _failing_fast(self) -> bool:
        """True while no worker runs and a resource setup failure's backoff lasts."""
        return (
            self._setup_error is not None
            and not any(w.state in (IDLE, BUSY) for w in list(self._workers.values()))
            and time.monotonic() < self._retry_at
        )

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

    def _until_next_deadline(self) -> float | None:
        if not self._deadlines:
            return None
        return max(0.0, self._deadlines[0][0] - time.monotonic())

    def _push_deadline(self, when: float, kind: int, a: Any, b: Any = None) -> None:
        heapq.heappush(self._deadlines, (when, next(self._seq), kind, a, b))
        if len(self._deadlines) > _COMPACT_AT + 8 * len(self._workers):
            self._compact_deadlines()

    def _compact_deadlines(self) -> None:
        """Drop deadlines that can no longer fire (tasks that finished before their timeout,
        workers that are gone), so a long timeout with many short tasks costs no memory."""
        self._deadlines = [d for d in self._deadlines if self._deadline_live(d[2], d[3], d[4])]
        heapq.heapify(self._deadlines)

    def _deadline_live(self, kind: int, a: Any, b: Any) -> bool:
        if kind == _TIMEOUT:
            return a.head is not None and a.head.no == b
        if kind in (_EXIT_WAIT, _IDLE, _START):
            return self._workers.get(a.sentinel) is a
        return True  # _KILL (a short grace) and _WAKE

    # ---------------------------------------------------------------- dispatch

    def _next_item(self) -> WorkItem | None:
        if self._retry:
            return self._retry.popleft()
        while True:
            with self._lock:
                if not self._pending:
                    return None
                item = self._pending.popleft()
            if item.future.start():  # a cancelled pending task never starts
                return item
            self.counters.cancelled += 1

    def _peek(self) -> WorkItem | None:
        if self._retry:
            return self._retry[0]
        with self._lock:
            return self._pending[0] if self._pending else None

    def _dispatch(self) -> None:
        """Send waiting tasks: one to each idle worker, then prefetch short ones.

        Prefetch keeps a few short tasks waiting in a busy worker's pipe, so it
        goes from one to the next without waiting for the parent. It is only
        for tasks that recently took under ``_PREFETCH_BELOW`` seconds, with no
        timeout, behind a head with no timeout, and small payloads, so a long
        task never holds up short ones for long, a timeout's kill never hits a
        task that was waiting, and a write to a busy worker never blocks.
        """
        if not (self._pending or self._retry):
            return
        batches: dict[_Worker, list[bytes]] = {}
        # A worker running its last task before recycling may already have its
        # replacement (early replacement): that one waits, idle and ready, so that
        # no more than max_workers tasks ever run at once. Otherwise every idle
        # worker has room, and the per-round count is skipped.
        if self._early_replacement and self._max_tasks is not None:
            room = self.max_workers - sum(w.state == BUSY for w in self._workers.values())
        else:
            room = len(self._idle)
        while self._idle and room > 0:
            item = self._next_item()
            if item is None:
                break
            self._assign(self._idle.pop(), item, batches)
            room -= 1
        if self._avg_seconds < _PREFETCH_BELOW and (self._pending or self._retry):
            self._prefetch(batches)
        for worker, frames in batches.items():
            try:
                _transport.write_all(worker.conn.fileno(), b"".join(frames))
            except OSError:
                # It died; its pidfd will say so, and the counter it shares says
                # which of these tasks (if any) it started: the rest are re-sent.
                self._conn_lost(worker)

    def _prefetch(self, batches: dict[_Worker, list[bytes]]) -> None:
        depth = min(_PREFETCH_MAX, max(2, int(_PREFETCH_WORTH / max(self._avg_seconds, 1e-6))))
        # Top up only pipes that ran half empty: fewer, fuller writes.
        takers = [
            w for w in self._workers.values()
            if w.state == BUSY and not w.closing and w.conn_open
            and 0 < len(w.inflight) <= depth // 2 and w.inflight[0].timeout is None
        ]
        while takers:
            for worker in list(takers):
                peeked = self._peek()
                if peeked is None or peeked.timeout is not None or (
                    len(peeked.payload) > _PREFETCH_PAYLOAD
                ):
                    return  # in order: what comes next waits for an idle worker
                item = self._next_item()
                if item is None:
                    return
                if item.timeout is not None or len(item.payload) > _PREFETCH_PAYLOAD:
                    # The peeked one was cancelled meanwhile and this one may not be
                    # prefetched: it waits (started) for an idle worker, first in line.
                    self._retry.appendleft(item)
                    return
                self._assign(worker, item, batches)
                if len(worker.inflight) >= depth or worker.closing:
                    takers.remove(worker)

    def _assign(self, worker: _Worker, item: WorkItem, batches: dict[_Worker, list[bytes]]) -> None:
        """Queue ``item`` for ``worker`` (written by ``_dispatch``); it is RUNNING from now on."""
        worker.sent += 1
        item.no = worker.sent
        worker.inflight.append(item)
        frames = batches.setdefault(worker, [])
        frames.append(_transport.frame(item.payload))
        if len(item.payload) > _PREFETCH_PAYLOAD:
            # The worker has it now; a large payload is not kept alive while it runs.
            # (A small one is kept, to re-send if the worker dies before starting it.)
            item.payload = b""
        if len(worker.inflight) == 1:
            worker.state = BUSY
            worker.logged = False
            self._arm_timeout(worker, item)
        if self._max_tasks is not None and worker.sent >= self._max_tasks:
            # Its last task: EXIT goes right behind it, so it exits without a round trip.
            frames.append(_transport.frame(_transport.EXIT))
            worker.closing = True

    def _arm_timeout(self, worker: _Worker, item: WorkItem) -> None:
        """Start ``item``'s timeout now that it is its worker's head (it starts running)."""
        if item.timeout is not None:
            # The deadline names the task's number, not the item: a task that finishes
            # early leaves a stale entry that must not keep its future and result.
            self._push_deadline(time.monotonic() + item.timeout, _TIMEOUT, worker, item.no)

    def _start_workers(self) -> None:
        """Start workers on demand: as many as waiting work needs, up to max_workers.

        With resources or an initializer (which may hold connections), workers
        still exiting (retiring or being killed) count toward max_workers until
        they are gone, so there are never more worker processes, nor more of
        their connections, than max_workers allows. Without either, a worker
        that takes no more work (its last task before recycling is sent, or it
        is being killed) does not hold its place: its replacement starts at
        once, so recycling and timeouts cost no idle time; it takes work once
        its predecessor's last task is done (``_dispatch``). At most twice
        max_workers processes exist even then, and never more than max_workers
        tasks run at once.
        """
        waiting = len(self._pending) + len(self._retry) - len(self._idle)
        if waiting <= 0:
            return
        starting = 0
        taking_work = 0  # workers that will run queued work: not exiting, not closing
        for w in self._workers.values():
            starting += w.state == STARTING
            taking_work += w.state in (STARTING, IDLE) or (w.state == BUSY and not w.closing)
        need = waiting - starting
        if need <= 0:
            return
        if time.monotonic() < self._retry_at:
            return  # backing off after a resource setup failure; a _WAKE deadline is set
        if self._early_replacement:
            room = min(self.max_workers - taking_work, 2 * self.max_workers - len(self._workers))
        else:
            room = self.max_workers - len(self._workers)
        for _ in range(min(need, room)):
            if not self._start_worker():
                return

    def _start_worker(self) -> bool:
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        inherited: list[int] = []
        if self.context.get_start_method() == "fork":
            inherited = [self._lifeline_w.fileno(), self._wake_r, self._wake_w,
                         parent_conn.fileno()]
        marks = Marks(1 + _transport.MARK_SLOTS)
        try:
            preload_in_forkserver(self.context)
            _block_sigint_for_children(self.context)
            log_config = bridge_config(self._log_target) if self._logs is not None else None
            with keep_global_start_method_unset():
                process = start_process(
                    self.context, "safepool-worker", worker_main,
                    child_conn, self._lifeline_r, inherited,
                    self._initializer, self._initargs, self._max_memory,
                    self._resources, log_config, marks,
                )
        except Exception as exc:
            parent_conn.close()
            marks.sent()
            message = f"could not start a worker process: {type(exc).__name__}: {exc}"
            self._break(lambda: InitializerError(message), cause=exc)
            return False
        finally:
            child_conn.close()
        marks.sent()
        worker = _Worker(process, parent_conn, marks)
        self._workers[worker.sentinel] = worker
        self._selector.register(parent_conn.fileno(), selectors.EVENT_READ, (worker, True))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, (worker, False))
        self._push_deadline(time.monotonic() + self._start_timeout, _START, worker)
        return True

    # ----------------------------------------------------------------- replies

    def _receive(self, worker: _Worker) -> None:
        """Read what ``worker`` sent (several messages at once if they are waiting)."""
        try:
            alive = worker.reader.fill()
        except OSError:
            alive = False
        for data in worker.reader.take():
            self._handle(worker, data)
        if not alive:
            # It is exiting. A dying process's files close before its pidfd
            # fires, so take an idle worker out of rotation now, not then.
            self._conn_lost(worker)

    def _conn_lost(self, worker: _Worker) -> None:
        if not worker.conn_open:
            return
        worker.conn_open = False
        self._selector.unregister(worker.conn.fileno())
        if worker.state == IDLE:
            self._idle.remove(worker)
            worker.state = RETIRING

    def _handle(self, worker: _Worker, data: bytes) -> None:
        kind, rss, seconds, note, body = _transport.parse(data)
        if kind == _transport.LOG:
            if self._logs is not None:
                self._logs.record(_decode_record(body, worker.pid))
                worker.logged = bool(worker.inflight)
            return
        if worker.state == STARTING:
            if kind == _transport.READY:
                self._boot_failures = 0
                self._backoff = 0.0
                self._setup_error = None
                self._make_idle(worker)
            elif kind == _transport.INIT_ERR:
                self._on_initializer_error(worker, _transport.decode_error(body, worker.pid))
            elif kind == _transport.SETUP_ERR:
                self._on_setup_error(worker, note, _transport.decode_error(body, worker.pid))
            return
        if not worker.inflight:  # a late READY
            return
        item = worker.inflight.popleft()
        if kind == _transport.SKIPPED:  # it never started this one
            if not item.settled:
                self._resend([item])
            if worker.state == BUSY:
                self._carry_on(worker)
            return
        if item.settled:  # timed out or stopped already; the reply raced the kill
            return
        if item.raw:
            if kind == _transport.OK:
                self.counters.completed += 1
            else:
                self.counters.failed += 1
            self._resolve(worker, _set_result, item.future, (kind, bytes(body), worker.pid))
        elif kind == _transport.OK:
            try:
                value = pickle.loads(body)
            except BaseException as exc:  # even SystemExit: this thread gets no signals
                self.counters.failed += 1
                self._resolve(worker, _set_exception, item.future,
                              _transport.unloadable_result(exc))
            else:
                self.counters.completed += 1
                self._resolve(worker, _set_result, item.future, value)
        else:
            self.counters.failed += 1
            self._resolve(worker, _set_exception, item.future,
                          _transport.decode_error(body, worker.pid))
        self._after_task(worker, rss, note, seconds)

    def _resolve(
        self,
        worker: _Worker,
        setter: Callable[[SafeFuture[Any], Any], None],
        future: SafeFuture[Any],
        value: Any,
    ) -> None:
        """Resolve a task's future; after its log records are handled if it logged any."""
        if worker.logged and self._logs is not None:
            worker.logged = False
            self._logs.call(lambda: setter(future, value))
        else:
            setter(future, value)

    def _after_task(self, worker: _Worker, rss: int, poison: str | None, seconds: float) -> None:
        worker.tasks += 1
        if self._avg_seconds == math.inf:
            self._avg_seconds = seconds
        else:
            self._avg_seconds += (seconds - self._avg_seconds) * _AVERAGE_WEIGHT
        if worker.state != BUSY:
            return
        too_big = self._max_memory is not None and rss > self._max_memory
        if too_big or poison is not None:
            # It exits by itself after this reply (see _worker): what waits in its
            # pipe never starts, and goes back to the front of the queue.
            if not self._shutdown:
                self.counters.recycled["poisoned" if poison is not None else "memory"] += 1
            self._requeue_waiting(worker)
            self._retire(worker, tell=False)
            return
        self._carry_on(worker)

    def _carry_on(self, worker: _Worker) -> None:
        """A busy worker finished (or skipped) its head task: it runs the next, or is free."""
        head = worker.head
        if head is not None:  # the next task in its pipe is running now
            worker.logged = False
            if not head.settled:  # (a settled one it skips: it was marked)
                self._arm_timeout(worker, head)
            return
        if worker.closing:  # EXIT was right behind its last task
            if not self._shutdown:
                self.counters.recycled["count"] += 1
            self._retire(worker, tell=False)
            return
        # After shutdown() a worker stays while queued work remains: one process per
        # queued task would be slow (and teardown/setup for each).
        if self._shutdown and not self._pending and not self._retry:
            self._retire(worker)
        else:
            self._make_idle(worker)

    def _requeue_waiting(self, worker: _Worker) -> None:
        """Put tasks that waited in a worker's pipe and never started back at the queue's front."""
        self._resend([item for item in worker.inflight if not item.settled])
        worker.inflight.clear()

    def _resend(self, items: list[WorkItem]) -> None:
        """Queue started tasks that never ran for another worker, ahead of the rest, in order;
        if the pool is being stopped, they fail with TaskStoppedError instead."""
        if self._stop_reason is not None:
            for item in items:
                self._stop_unsent(item, self._stop_reason)
        else:
            self._retry.extendleft(reversed(items))

    def _make_idle(self, worker: _Worker) -> None:
        worker.state = IDLE
        worker.ready = True
        self._idle.append(worker)
        if self._idle_timeout is not None:
            worker.idle_since = time.monotonic()
            if not worker.idle_armed:  # at most one _IDLE deadline per worker in the heap
                worker.idle_armed = True
                self._push_deadline(worker.idle_since + self._idle_timeout, _IDLE, worker)

    def _retire(self, worker: _Worker, within: float | None = None, tell: bool = True) -> None:
        """Ask a worker to exit cleanly (teardown runs); kill it if it takes longer than
        ``within`` seconds (default ``exit_timeout``). ``tell=False``: it is exiting
        already (EXIT is in its pipe, or it exits by itself)."""
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = RETIRING
        worker.planned = True
        if tell and not worker.closing and worker.conn_open:
            worker.closing = True
            try:
                _transport.write_all(worker.conn.fileno(), _transport.frame(_transport.EXIT))
            except OSError:
                self._conn_lost(worker)
        wait = self._exit_timeout if within is None else within
        self._push_deadline(time.monotonic() + wait, _EXIT_WAIT, worker)

    def _retire_idle_for_shutdown(self) -> None:
        if self._pending or self._retry:
            return
        for worker in list(self._workers.values()):
            if worker.state in (IDLE, STARTING):
                self._retire(worker)

    # ------------------------------------------------------------------ deaths

    def _reap(self, worker: _Worker) -> None:
        # Everything it wrote before dying is in the pipe: read it all first.
        while worker.conn_open and worker.conn.poll():
            self._receive(worker)
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        if worker.ready and not worker.planned and not self._shutdown:
            self.counters.recycled["crash"] += 1
        # The counter it shared says which of the tasks left in its pipe it had
        # started: that one was running when it died, the others never started.
        started = worker.marks[0]
        unstarted: list[WorkItem] = []
        for item in worker.inflight:
            if item.settled:
                continue
            if item.no > started and item.payload:
                unstarted.append(item)
            elif worker.killed_for is not None:  # it started just as the parent stopped it
                self.counters.stopped += 1
                why = (f"{worker.killed_for}; this task had just started on the same worker "
                       "when the worker was stopped")
                self._resolve(worker, _set_exception, item.future,
                              self._stopped(why, worker.pid))
            else:
                self.counters.crashed += 1
                self._resolve(worker, _set_exception, item.future,
                              WorkerCrashedError(worker.pid, exitcode))
        worker.inflight.clear()
        self._resend(unstarted)
        if worker.state == STARTING and not self._shutdown:
            self._boot_failures += 1
            self._last_boot_failure = f"worker pid {worker.pid} {describe_exitcode(exitcode)}"
            if self._boot_failures >= _MAX_BOOT_FAILURES:
                message = (
                    f"{self._boot_failures} workers in a row died while starting (last: "
                    f"{self._last_boot_failure}). Check that the main module can be imported "
                    "in a new process (guard the script's entry point with "
                    "`if __name__ == '__main__':`) and that the initializer does not crash"
                )
                self._break(lambda: InitializerError(message))
        self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        self._workers.pop(worker.sentinel, None)
        self._conn_lost(worker)
        self._selector.unregister(worker.sentinel)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.conn.close()
        worker.marks.close()
        if worker.sentinel != worker.process.sentinel:
            os.close(worker.sentinel)
        # Release the process's fds now, but leave the Process object usable
        # (join(), exitcode, is_alive()) for code that kept it from the _processes
        # view, as the stdlib's are: Process.close() would make them raise.
        popen = getattr(worker.process, "_popen", None)
        if popen is not None and popen.poll() is not None:
            popen.close()

    # --------------------------------------------------------------- deadlines

    def _fire_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, kind, a, b = heapq.heappop(self._deadlines)
            if kind == _TIMEOUT:
                item = a.head
                if item is not None and item.no == b and a.state == BUSY:
                    item.settled = True
                    self.counters.timed_out += 1
                    self.counters.recycled["timeout"] += 1
                    self._resolve(
                        a, _set_exception, item.future, TaskTimeoutError(item.timeout, a.pid)
                    )
                    self._kill(a)
            elif kind == _KILL:
                a.refresh()
                a.signal(signal.SIGKILL)
            elif kind == _EXIT_WAIT and a.sentinel in self._workers and a.state == RETIRING:
                self._kill(a)
            elif kind == _IDLE:
                self._check_idle(a, now)
            elif kind == _START and a.state == STARTING and a.sentinel in self._workers:
                self._on_start_timeout(a)
            # _WAKE only ends the wait, so that _start_workers runs again.

    def _check_idle(self, worker: _Worker, now: float) -> None:
        """Retire a worker idle for idle_timeout; re-arm if it worked since and is idle again."""
        worker.idle_armed = False
        if worker.state != IDLE or worker.sentinel not in self._workers:
            return  # busy or gone: going idle again arms a new deadline
        assert self._idle_timeout is not None
        due = worker.idle_since + self._idle_timeout
        if due <= now:
            self.counters.recycled["idle"] += 1
            self._retire(worker)
        else:
            worker.idle_armed = True
            self._push_deadline(due, _IDLE, worker)

    def _kill(self, worker: _Worker) -> None:
        """Stop a worker and its process tree: SIGTERM now, SIGKILL after the grace period."""
        if worker in self._idle:
            self._idle.remove(worker)
        worker.state = KILLING
        worker.planned = True
        tree = ProcessTree(worker.pid)
        if self._kill_grace > 0:
            tree.signal(signal.SIGTERM)
            self._push_deadline(time.monotonic() + self._kill_grace, _KILL, tree)
        else:
            tree.signal(signal.SIGKILL)

    def _handle_stop_requests(self) -> None:
        with self._lock:
            requests, self._stop_requests = self._stop_requests, []
        for request in requests:
            request.stopped = self._stop_one(request.future, request.reason)
            request.handled.set()

    def _stop_one(self, future: SafeFuture[Any], reason: str) -> bool:
        for worker in list(self._workers.values()):
            if worker.state != BUSY:
                continue
            for position, item in enumerate(worker.inflight):
                if item.future is not future or item.settled:
                    continue
                if position == 0:
                    if worker.marks[0] > item.no:
                        return False  # it finished: its reply is on the way
                    self.counters.recycled["stopped"] += 1
                    self._stop_busy(worker, reason, everything=False)
                    return True
                # Waiting in the pipe: mark it, and the worker skips it. If the worker
                # had started it already, it is running: stop the worker.
                worker.marks[1 + item.no % _transport.MARK_SLOTS] = item.no
                self._settle_stopped(worker, item, reason)
                if worker.marks[0] >= item.no:
                    self.counters.recycled["stopped"] += 1
                    self._halt_waiting(worker)
                    worker.killed_for = reason
                    self._kill(worker)
                return True
        for item in self._retry:
            if item.future is future:
                self._retry.remove(item)
                self._stop_unsent(item, reason)
                return True
        return False

    def _settle_stopped(self, worker: _Worker, item: WorkItem, reason: str) -> None:
        item.settled = True
        self.counters.stopped += 1
        self._resolve(worker, _set_exception, item.future, self._stopped(reason, worker.pid))

    def _stop_busy(self, worker: _Worker, reason: str, everything: bool = True) -> None:
        """Fail a worker's running task (and, if ``everything``, those waiting in its
        pipe) with TaskStoppedError, and kill its tree. Tasks that waited and are not
        failed go back to the queue (see ``_reap``)."""
        for item in list(worker.inflight) if everything else [worker.inflight[0]]:
            if not item.settled:
                self._settle_stopped(worker, item, reason)
        self._halt_waiting(worker)
        worker.killed_for = reason
        self._kill(worker)

    def _halt_waiting(self, worker: _Worker) -> None:
        """Mark every task waiting in a worker's pipe, so that if the worker gets to
        one before the signal that stops it arrives, it skips it. After the worker is
        gone, those it never started go back to the queue (``_reap``)."""
        for item in list(worker.inflight)[1:]:
            worker.marks[1 + item.no % _transport.MARK_SLOTS] = item.no

    def _stop_unsent(self, item: WorkItem, reason: str) -> None:
        """Fail a started task waiting to be re-sent."""
        self.counters.stopped += 1
        _set_exception(item.future, self._stopped(reason, None))

    def _stopped(self, reason: str, pid: int | None) -> TaskStoppedError:
        """The error of a task stopped on purpose: a PoolStoppedError (a BrokenProcessPool)
        once the whole pool is being stopped, as the stdlib's terminate_workers() fails it."""
        if self._stop_reason is not None:
            return PoolStoppedError(reason, pid)
        return TaskStoppedError(reason, pid)

    def _stop_running_tasks(self) -> None:
        self._stopping_handled = True
        reason = self._stop_reason or "stopped"
        for item in self._retry:
            self._stop_unsent(item, reason)
        self._retry.clear()
        for worker in list(self._workers.values()):
            if worker.state == BUSY and worker.inflight:
                self._stop_busy(worker, reason)
            elif worker.state in (IDLE, STARTING):
                self._retire(worker, within=self._kill_grace)  # a stop: teardown gets kill_grace
            elif worker.state == RETIRING:
                self._push_deadline(time.monotonic() + self._kill_grace, _EXIT_WAIT, worker)

    # ------------------------------------------------------------------ broken

    def _on_initializer_error(self, worker: _Worker, cause: BaseException) -> None:
        summary = (
            f"the initializer failed in worker pid {worker.pid} with {_summary(cause)}; "
            "the executor is broken (as in concurrent.futures) and accepts no more work"
        )
        self._break(lambda: InitializerError(summary), cause=cause)
        self._retire(worker)

    def _on_setup_error(
        self, worker: _Worker, name: str | None, cause: BaseException
    ) -> None:
        """A resource failed to set up: fail what waits if no worker can serve it; back off."""
        worker.state = RETIRING  # it exits by itself; not a boot crash
        self._setup_failed(name, worker.pid, _summary(cause).strip(), cause)

    def _on_start_timeout(self, worker: _Worker) -> None:
        """A worker never got ready (a hung initializer or resource setup): kill it, back off."""
        self._kill(worker)
        message = (
            f"the worker did not finish starting within {self._start_timeout:g}s "
            "(its initializer or a resource setup hung); it was killed"
        )
        self._setup_failed(None, worker.pid, message, None)

    def _setup_failed(
        self, name: str | None, pid: int, summary: str, cause: BaseException | None
    ) -> None:
        self._backoff = min(max(0.1, self._backoff * 2), self._backoff_max)
        self._retry_at = time.monotonic() + self._backoff
        self._push_deadline(self._retry_at, _WAKE, None)
        retry_in = self._backoff

        def make() -> BaseException:
            error = ResourceSetupError(name, pid, summary, retry_in)
            error.__cause__ = cause
            return error

        self._setup_error = make
        if not any(w.state in (IDLE, BUSY) for w in self._workers.values()):
            self._fail_waiting(make)

    def _break(
        self, make_error: Callable[[], BaseException], cause: BaseException | None = None
    ) -> None:
        """Refuse further work and fail everything that has not started with a fresh error."""

        def make() -> BaseException:
            error = make_error()
            error.__cause__ = cause
            return error

        with self._lock:
            if self._broken is None:
                self._broken = make
            self._shutdown = True
        self._fail_waiting(make)

    def _fail_waiting(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every task that has not started (queued, or waiting to be re-sent)."""
        with self._lock:
            items = self._take_pending()
        items += self._retry
        self._retry.clear()
        for item in items:
            if item.future.cancelled():
                self.counters.cancelled += 1
            else:
                self.counters.failed += 1
            _set_exception(item.future, make_error())

    def _fail_everything(self, exc: BaseException) -> None:  # pragma: no cover - defensive
        def make() -> BaseException:
            error = RuntimeError(f"safepool's manager thread failed: {exc!r}")
            error.__cause__ = exc
            return error

        with self._lock:
            self._shutdown = True
        self._fail_waiting(make)
        for worker in list(self._workers.values()):
            for item in worker.inflight:
                _set_exception(item.future, make())
            worker.inflight.clear()
            ProcessTree(worker.pid).signal(signal.SIGKILL)

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
