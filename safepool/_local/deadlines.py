"""Deadlines: one heap of what must happen at a given time, fired by the manager loop.

Task timeouts, the SIGKILL after a SIGTERM's grace period, workers that take
too long to exit or to start, idle timeouts, and the end of a resource-setup
back-off. The loop waits no longer than the earliest; entries that can no
longer fire are dropped when the heap grows.
"""

from __future__ import annotations

import heapq
import signal
import time
from typing import Any

from safepool._errors import TaskTimeoutError
from safepool._local.state import BUSY, IDLE, RETIRING, STARTING, PoolState, _set_exception, _Worker

__all__ = ["Deadlines"]

_TIMEOUT, _KILL, _EXIT_WAIT, _WAKE, _IDLE, _START = 0, 1, 2, 3, 4, 5
#: Past this many entries (plus 8 per worker) the deadline heap drops stale ones.
_COMPACT_AT = 1024


class Deadlines(PoolState):
    """The pool's deadline part (manager thread only)."""

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
        if due <= now and len(self._idle) <= self._spares:
            worker.idle_armed = True  # a spare: kept, not retired for idling
            self._push_deadline(now + self._idle_timeout, _IDLE, worker)
        elif due <= now:
            self.counters.recycled["idle"] += 1
            self._retire(worker)
        else:
            worker.idle_armed = True
            self._push_deadline(due, _IDLE, worker)
