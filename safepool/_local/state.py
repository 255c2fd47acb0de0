"""What the local engine keeps: its records of tasks and workers, and the state its parts share.

A ``WorkItem`` is one submitted call, a ``_Worker`` one worker process, a
``_StopRequest`` one caller's ``stop_task``. ``PoolState`` declares what
``Pool.__init__`` sets and the methods the parts of a pool call on one
another, so that each part type-checks on its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from multiprocessing import connection as _mp_connection
from multiprocessing import popen_forkserver as _popen_forkserver
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from safepool import _transport
from safepool._errors import TaskStoppedError
from safepool._future import SafeFuture
from safepool._logbridge import LogDispatcher
from safepool._marks import Marks
from safepool._resources import Resource
from safepool._stats import Counters

__all__ = ["BUSY", "IDLE", "KILLING", "RETIRING", "STARTING", "PoolState", "WorkItem"]

STARTING, IDLE, BUSY, RETIRING, KILLING = "starting", "idle", "busy", "retiring", "killing"


class WorkItem:
    """One submitted call: its future, its pickled payload and its timeout.

    A call from ``map`` comes unpickled (``call``): the manager pickles it when
    it takes it from the queue (``Dispatch._pickled``), so the caller's thread
    does not pickle the whole input before the first call can start.
    """

    __slots__ = ("call", "future", "no", "payload", "raw", "settled", "timeout")

    def __init__(
        self, future: SafeFuture[Any], payload: _transport.Payload, timeout: float | None,
        raw: bool = False, call: _transport.DeferredCall | None = None,
    ) -> None:
        self.future = future
        self.payload = payload
        self.call = call  # the call still to pickle, if payload is not made yet
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
        _serialize_forkserver_poll(process)

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


def _serialize_forkserver_poll(process: BaseProcess) -> None:
    """Let the pool and a user's ``join()`` read a forkserver worker's exit code at once.

    A forkserver worker's exit code is 4 bytes the forkserver writes to its
    sentinel pipe, and ``Popen.poll`` reads them. Two threads polling together
    (the manager reaping the worker, and code that kept the process from the
    ``_processes`` view joining it) both see the pipe ready; one reads the code,
    the other reads end-of-file and records 255, possibly over the real code.
    So this process's ``poll`` waits for the pipe outside a lock, and reads it
    under the lock, once.
    """
    popen = getattr(process, "_popen", None)
    if popen is None or not isinstance(popen, _popen_forkserver.Popen):
        return
    lock = threading.Lock()
    read_once = popen.poll

    def poll(flag: int = os.WNOHANG) -> int | None:
        if popen.returncode is None and flag != os.WNOHANG:
            _mp_connection.wait([popen.sentinel])  # blocking: never while holding the lock
        with lock:
            return read_once(os.WNOHANG)

    popen.poll = poll  # type: ignore[method-assign]  # this one process only


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


class PoolState:
    """Everything a ``Pool`` holds, declared here and set in ``Pool.__init__``.

    The parts of a pool are mixins (``dispatch``, ``workers``, ``deadlines``,
    ``stopping``, ``failures``) over this one object: a call between them is a
    plain method call, with no indirection on the per-task path.
    """

    context: BaseContext
    _log_target: logging.Logger | None
    _logs: LogDispatcher | None
    counters: Counters
    _idle_timeout: float | None
    _start_timeout: float
    _resources: tuple[Resource[Any], ...]
    _backoff_max: float
    max_workers: int
    _initializer: Callable[..., object] | None
    _initargs: tuple[Any, ...]
    _max_tasks: int | None
    _max_memory: int | None
    _kill_grace: float
    _exit_timeout: float

    # Shared with caller threads, under _lock.
    _lock: threading.Lock
    _pending: deque[WorkItem]
    _shutdown: bool
    _stop_reason: str | None
    _broken: Callable[[], BaseException] | None
    _thread: threading.Thread | None
    _done: threading.Event
    _stop_requests: list[_StopRequest]
    _manager_done: bool

    # Owned by the manager thread.
    _workers: dict[int, _Worker]
    _selector: selectors.BaseSelector
    _idle: list[_Worker]
    _avg_seconds: float
    _retry: deque[WorkItem]
    _deadlines: list[tuple[float, int, int, Any, Any]]
    _seq: itertools.count[int]
    _boot_failures: int
    _last_boot_failure: str
    _backoff: float
    _retry_at: float
    _setup_error: Callable[[], BaseException] | None
    _early_replacement: bool
    _spares: int
    _spare_on_demand: bool
    _stopping_handled: bool
    _wake_r: int
    _wake_w: int
    _woken: bool
    _call_pickler: _transport.CallPickler
    _lifeline_r: Connection
    _lifeline_w: Connection

    # Caller threads add to counters.failed and .cancelled too (under _lock): the
    # manager's own additions take it as well, or one of two at once could be lost.
    def _count_failed(self) -> None:
        with self._lock:
            self.counters.failed += 1

    def _count_cancelled(self) -> None:
        with self._lock:
            self.counters.cancelled += 1

    if TYPE_CHECKING:
        # The calls the parts make on one another (each is defined in one part).

        # pool
        def _take_pending(self) -> list[WorkItem]: ...

        # dispatch
        def _receive(self, worker: _Worker) -> None: ...
        def _resolve(
            self,
            worker: _Worker,
            setter: Callable[[SafeFuture[Any], Any], None],
            future: SafeFuture[Any],
            value: Any,
        ) -> None: ...
        def _resend(self, items: list[WorkItem]) -> None: ...

        # workers
        def _conn_lost(self, worker: _Worker) -> None: ...
        def _want_a_spare(self) -> None: ...
        def _make_idle(self, worker: _Worker) -> None: ...
        def _retire(
            self, worker: _Worker, within: float | None = None, tell: bool = True
        ) -> None: ...
        def _kill(self, worker: _Worker) -> None: ...

        # deadlines
        def _push_deadline(self, when: float, kind: int, a: Any, b: Any = None) -> None: ...

        # stopping
        def _stop_unsent(self, item: WorkItem, reason: str) -> None: ...
        def _stopped(self, reason: str, pid: int | None) -> TaskStoppedError: ...

        # failures
        def _on_initializer_error(self, worker: _Worker, cause: BaseException) -> None: ...
        def _on_setup_error(
            self, worker: _Worker, name: str | None, cause: BaseException
        ) -> None: ...
        def _on_start_timeout(self, worker: _Worker) -> None: ...
        def _break(
            self, make_error: Callable[[], BaseException], cause: BaseException | None = None
        ) -> None: ...
