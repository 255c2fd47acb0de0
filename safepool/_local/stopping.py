"""Stopping tasks on purpose: ``stop_task`` requests, and the manager's side of ``stop()``.

A caller's ``stop_task`` becomes a ``_StopRequest`` that the manager thread
handles: a task waiting in a worker's pipe is marked so the worker skips it;
a running one is stopped by killing its worker's process tree. Stopping the
whole pool (``stop()``, ``terminate_workers()``, Ctrl-C) fails every running
task this way and retires the other workers.
"""

from __future__ import annotations

import time
from typing import Any

from safepool import _transport
from safepool._errors import PoolStoppedError, TaskStoppedError
from safepool._future import SafeFuture
from safepool._local.deadlines import _EXIT_WAIT
from safepool._local.state import (
    BUSY,
    IDLE,
    RETIRING,
    STARTING,
    PoolState,
    WorkItem,
    _set_exception,
    _Worker,
)

__all__ = ["Stopping"]


class Stopping(PoolState):
    """The pool's stopping part (manager thread, or a done-callback running on it)."""

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
