"""Dispatch: tasks out to workers, replies back to their futures.

Waiting tasks go to idle workers, and short ones are prefetched into busy
workers' pipes; each reply resolves its task's future, and the worker runs
the next task in its pipe, takes more work, or retires.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from typing import Any

from safepool import _transport
from safepool._errors import PicklingError
from safepool._future import SafeFuture
from safepool._local.deadlines import _TIMEOUT
from safepool._local.state import (
    BUSY,
    STARTING,
    PoolState,
    WorkItem,
    _set_exception,
    _set_result,
    _Worker,
)
from safepool._transport import FRAME_LENGTH as _LENGTH

__all__ = ["Dispatch"]

#: Prefetch (see ``Pool._dispatch``) only while tasks take less than this on average...
_PREFETCH_BELOW = 0.001
#: ...keeping about this many seconds of work, and at most _PREFETCH_MAX tasks, per worker...
_PREFETCH_WORTH = 0.002
_PREFETCH_MAX = 32
#: ...and only tasks whose pickled call is at most this big.
_PREFETCH_PAYLOAD = 16 * 1024
#: Weight of the newest task in the moving average of task durations: small when
#: tasks get longer (one slow task does not stop prefetch), large when they get
#: shorter (after a few slow tasks, a burst of short ones is prefetched within a few).
_AVERAGE_WEIGHT = 0.1
_AVERAGE_WEIGHT_DOWN = 0.5


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


class Dispatch(PoolState):
    """The pool's dispatch part: sending tasks and handling replies (manager thread only)."""

    def _next_item(self) -> WorkItem | None:
        if self._retry:
            return self._retry.popleft()
        while True:
            with self._lock:
                if not self._pending or (self._deadlines and self._pending[0].call is not None
                                         and self._deadline_due()):
                    return None
                item = self._pending.popleft()
            if not item.future.start():  # a cancelled pending task never starts
                self._count_cancelled()
            elif item.call is None or self._pickled(item):
                return item

    def _next_prefetchable(self) -> WorkItem | None:
        """The next task, if it may wait in a busy worker's pipe: no timeout, a small
        payload. Else None, and it stays first in line, for an idle worker."""
        while True:
            if self._retry:  # re-sent after a worker died: started already
                head = self._retry[0]
                if head.timeout is not None or len(head.payload) > _PREFETCH_PAYLOAD:
                    return None
                return self._retry.popleft()
            with self._lock:  # one acquisition to look and take
                if not self._pending:
                    return None
                head = self._pending[0]
                if self._deadlines and head.call is not None and self._deadline_due():
                    return None
                if head.timeout is not None or (head.call is None
                                                and len(head.payload) > _PREFETCH_PAYLOAD):
                    return None
                self._pending.popleft()
            if not head.future.start():  # a cancelled pending task never starts
                self._count_cancelled()
            elif head.call is None:
                return head
            elif self._pickled(head):
                if len(head.payload) <= _PREFETCH_PAYLOAD:
                    return head
                # Too big to wait in a pipe: first in line for an idle worker, as a
                # started task whose send failed waits (the queue's head was this one).
                self._retry.appendleft(head)
                return None

    def _deadline_due(self) -> bool:
        """Whether a deadline is due: tested (when there are deadlines) before pickling
        a ``map`` call, to end this dispatch round first. Pickling runs the arguments'
        ``__reduce__``, which may be slow; a timeout's kill then waits for one call's
        pickling, not a round's."""
        return self._deadlines[0][0] <= time.monotonic()

    def _pickled(self, item: WorkItem) -> bool:
        """Pickle a started ``map`` call (``item.call``); False, with its future failed,
        if it cannot be pickled. Runs outside ``_lock``: pickling runs user code, which
        may submit."""
        call = item.call
        assert call is not None
        item.call = None
        try:
            pickler = self._call_pickler
            item.payload = (pickler.dumps_chunk(call.fn, call.args) if call.chunk
                            else pickler.dumps(call.fn, call.args, call.kwargs))
            return True
        except BaseException as exc:  # a PicklingError naming the culprit; anything else too
            error = exc if isinstance(exc, PicklingError) else PicklingError(
                "the call", type(call.fn).__qualname__, f"{type(exc).__qualname__} raised")
        if call.chunk:
            self._split(item, call)
        else:
            self._count_failed()
            _set_exception(item.future, error)
        return False

    def _split(self, item: WorkItem, call: _transport.DeferredCall) -> None:
        """A ``map`` chunk that cannot be pickled as a whole: queue its calls one by one,
        first in line, and resolve its future with their futures (``SplitChunk``), so
        that only the call that cannot be pickled fails. Done here, not by the map's
        iterator: the calls are queued even if the map is read after ``shutdown()``."""
        chunk = item.future
        fn, calls = call.args  # the call is runner(fn, calls)
        items = []
        for one in calls:
            future: SafeFuture[Any] = type(chunk)()
            future._safepool = chunk._safepool
            future._fn = fn
            future._report_unretrieved = chunk._report_unretrieved
            items.append(WorkItem(future, b"", item.timeout, call=_transport.DeferredCall(
                fn, (one,) if call.single else one, {}, chunk=False)))
        with self._lock:
            self.counters.submitted += len(items) - 1  # the chunk becomes its calls
            # Stopped or broken since the chunk was taken: its queue is emptied already,
            # and its calls end now as the queue's tasks did.
            broken, stopped = self._broken, self._stop_reason is not None
            if broken is not None:
                self.counters.failed += len(items)
            elif stopped:
                self.counters.cancelled += len(items)
            else:
                self._pending.extendleft(reversed(items))
        if broken is not None:
            for one in items:
                _set_exception(one.future, broken())
        elif stopped:
            for one in items:
                one.future.cancel()
        _set_result(chunk, _transport.SplitChunk([i.future for i in items]))

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
        self._call_pickler.refresh()
        batches: dict[_Worker, list[bytes]] = {}
        # A worker running its last task before recycling may already have its
        # replacement (early replacement), and spares wait idle and ready: so that
        # no more than max_workers tasks ever run at once, idle workers take work
        # only while fewer run. Otherwise every idle worker has room, and the
        # per-round count is skipped.
        if self._spares or (self._early_replacement and self._max_tasks is not None):
            room = self.max_workers - sum(w.state == BUSY for w in self._workers.values())
        else:
            room = len(self._idle)
        while self._idle and room > 0:
            item = self._next_item()
            if item is None:
                break
            worker = self._idle.pop()
            self._assign(worker, item, batches)
            # Sent now, not with the prefetched tasks: the worker starts while the
            # others are given theirs (and map's calls are pickled).
            self._send(worker, batches.pop(worker))
            room -= 1
        if self._avg_seconds < _PREFETCH_BELOW and (self._pending or self._retry):
            self._prefetch(batches)
        for worker, frames in batches.items():
            self._send(worker, frames)

    def _send(self, worker: _Worker, frames: list[bytes]) -> None:
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
                item = self._next_prefetchable()
                if item is None:
                    return  # in order: what comes next waits for an idle worker
                self._assign(worker, item, batches)
                if len(worker.inflight) >= depth or worker.closing:
                    takers.remove(worker)

    def _assign(self, worker: _Worker, item: WorkItem, batches: dict[_Worker, list[bytes]]) -> None:
        """Queue ``item`` for ``worker`` (written by ``_dispatch``); it is RUNNING from now on."""
        worker.sent += 1
        item.no = worker.sent
        item.future._worker_pid = worker.pid
        worker.inflight.append(item)
        frames = batches.setdefault(worker, [])
        payload = item.payload
        if type(payload) is bytes and len(payload) <= _PREFETCH_PAYLOAD:
            frames += (_LENGTH.pack(len(payload)), payload)  # joined once, by _dispatch
        else:
            frames.append(_transport.frame(payload))
            if len(payload) > _PREFETCH_PAYLOAD:
                # The worker has it now; a large payload is not kept alive while it runs.
                # (A small one is kept, to re-send if the worker dies before starting it.)
                item.payload = b""
        if len(worker.inflight) == 1:  # it starts now
            worker.state = BUSY
            worker.logged = False
            if item.timeout is not None:
                self._arm_timeout(worker, item)
        if self._max_tasks is not None and worker.sent >= self._max_tasks:
            # Its last task: EXIT goes right behind it, so it exits without a round trip.
            frames.append(_transport.frame(_transport.EXIT))
            worker.closing = True

    def _arm_timeout(self, worker: _Worker, item: WorkItem) -> None:
        """Start ``item``'s timeout, which it has, now that it is its worker's head (it
        starts running). (Its callers test ``item.timeout`` first: they run per task.)"""
        assert item.timeout is not None
        if self._spare_on_demand:  # its kill must not wait for a process start either
            self._want_a_spare()
        # The deadline names the task's number, not the item: a task that finishes
        # early leaves a stale entry that must not keep its future and result.
        self._push_deadline(time.monotonic() + item.timeout, _TIMEOUT, worker, item.no)

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
        self.counters.record_seconds(seconds)  # before the future resolves, as the outcome
        if item.raw:
            if kind == _transport.OK:
                self.counters.completed += 1
            else:
                self._count_failed()
            self._resolve(worker, _set_result, item.future, (kind, bytes(body), worker.pid))
        elif kind == _transport.OK:
            try:
                value = pickle.loads(body)
            except BaseException as exc:  # even SystemExit: this thread gets no signals
                self._count_failed()
                self._resolve(worker, _set_exception, item.future,
                              _transport.unloadable_result(exc))
            else:
                self.counters.completed += 1
                if worker.logged:
                    self._resolve(worker, _set_result, item.future, value)
                else:  # the common case: _set_result, without _resolve's indirection
                    try:
                        item.future.set_result(value)
                    except InvalidStateError:  # pragma: no cover - a stop raced the reply
                        pass
        else:
            self._count_failed()
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
            weight = _AVERAGE_WEIGHT_DOWN if seconds < self._avg_seconds else _AVERAGE_WEIGHT
            self._avg_seconds += (seconds - self._avg_seconds) * weight
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
        if worker.inflight:  # the next task in its pipe is running now
            head = worker.inflight[0]
            worker.logged = False
            if head.timeout is not None and not head.settled:  # (a settled one it skips)
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
