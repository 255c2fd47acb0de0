"""The Dask engine: an executor's calls run in node-local safepool pools on a Dask cluster.

Data flow::

  client process                     Dask scheduler           each Dask worker process
  --------------                     --------------           ------------------------
  Executor(cluster=client)
    register_plugin ────────────────> plugin, settings ──────> NodePoolPlugin.setup:
    set_metadata(settings)            (kept for workers          start the node's pool
                                       that join later)          (a local safepool Pool,
  submit(fn, *args)                                              its own manager thread)
    pickle the call (cloudpickle
      for __main__ and lambdas)
    client.submit(run_on_node, ────> places the task, honours ──> run_on_node (a coroutine
      id, n, payload, timeout)        dask_resources,             on the worker's loop):
                                      reschedules it if its       pool.submit(raw=True)
                                      worker dies                   └─> a process of the
                                                                        node's pool runs
                                                                        fn: timeout, crash,
                                                                        resources, recycling
  future.result() <── decode ─────── result ─────────────────── ("reply", kind, bytes, pid)
    (unpickled once, here)                                      or ("error", exc, cause)
  cancel()/stop_task()/shutdown/
    Ctrl-C: Client.run(control) ───────────────────────────────> cancel, stop (kill the
                                                                  task's process tree),
                                                                  stop_all, stats
  shutdown(): unregister_plugin ──> teardown ─────────────────> the pool shuts down:
                                                                  resources torn down

The client does no waiting of its own: Dask's callback thread resolves each
future once its Dask task ends, with the outcome the node's pool decided.

A Dask worker that dies takes its pool with it (every pool process has a
lifeline to it) and Dask runs its calls again elsewhere: at-least-once across
nodes, exactly-once within a node. The node's pool runs a call, the client
decides what its future says: the first outcome to arrive settles it, once.

Cancelling asks every node (one ``Client.run``): a call that started
somewhere is not cancelled (``cancel()`` is False, as in ``concurrent.futures``);
one that has not is tombstoned on every node, so it can never start, and its
Dask task is released.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import itertools
import pickle
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import cloudpickle
from distributed import Client, as_completed

from safepool import _transport
from safepool._dask.node import NodePoolPlugin, control, metadata_key, plugin_name, run_on_node
from safepool._errors import (
    PicklingError,
    PoolStoppedError,
    TaskStoppedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from safepool._future import SafeFuture
from safepool._stats import Counters, Stats, TaskSeconds, WorkerStats, merge_task_seconds

__all__ = ["ClusterFuture", "DaskEngine", "connect"]

#: Engines not closed yet: at interpreter exit each unregisters its plugin, so no
#: node keeps an idle pool for an executor that is gone (shutdown(wait=False) or none).
_live: weakref.WeakSet[DaskEngine] = weakref.WeakSet()


@atexit.register  # after distributed's own exit hooks were registered: so it runs before them
def _close_all() -> None:
    for engine in list(_live):
        engine._close()


def connect(cluster: Any) -> tuple[Client, bool]:
    """The ``distributed.Client`` for ``cluster=``, and whether safepool made it (and closes it)."""
    if isinstance(cluster, str):
        return Client(cluster, set_as_default=False), True
    if isinstance(cluster, Client):
        if cluster.asynchronous:
            raise TypeError(
                "cluster= needs a synchronous distributed.Client; this one was made with "
                "asynchronous=True. Pass the scheduler address instead, or a Client made "
                "without asynchronous=True."
            )
        if cluster.status not in ("running", "connecting", "newly-created"):
            raise ValueError(f"cluster= got a distributed.Client that is {cluster.status}")
        return cluster, False
    raise TypeError(
        "cluster= takes a distributed.Client or a scheduler address such as "
        f"'tcp://127.0.0.1:8786', not {type(cluster).__name__}"
    )


class ClusterFuture(SafeFuture[Any]):
    """The future of a call on a cluster: ``cancel()`` asks the nodes first."""

    _engine: DaskEngine
    _call = 0
    _dask: Any = None  # its distributed.Future

    def cancel(self) -> bool:
        with self._condition:
            if self._state == "CANCELLED" or self._state == "CANCELLED_AND_NOTIFIED":
                return True
            if self._state != "PENDING":
                return False
        return self._engine.cancel_calls([self]) == 1

    def _mark_running(self) -> None:
        """A node said it started: so ``running()`` says so and later ``cancel()`` is free."""
        with self._condition:
            if self._state == "PENDING":
                self._state = "RUNNING"

    def _cancel_here(self) -> bool:
        """Cancel this future on the client only (no node runs it)."""
        return SafeFuture.cancel(self)


class DaskEngine:
    """Runs an executor's calls in a safepool pool on each worker of a Dask cluster."""

    future_class = ClusterFuture

    def __init__(
        self,
        cluster: Any,
        *,
        context: BaseContext,
        max_workers: int | None,
        settings: dict[str, Any],
        kill_grace: float,
    ) -> None:
        self.client, self._owns_client = connect(cluster)
        self.context = context
        self._per_node = max_workers
        self._kill_grace = kill_grace
        self.id = uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._calls = itertools.count(1)
        self._outstanding: dict[int, ClusterFuture] = {}
        # Dask tasks not settled yet: their futures by task key, and what yields them
        # as they end, to the collector thread (started when needed, see _collect).
        self._by_key: dict[Any, ClusterFuture] = {}
        self._finished = as_completed(loop=self.client.loop)
        self._collector: threading.Thread | None = None
        self._shutdown = False
        self._closed = False
        self.counters = Counters()
        _check_importable(settings)
        blob = cloudpickle.dumps(
            {"max_workers": max_workers, "start_method": context.get_start_method(), **settings}
        )
        try:
            self.client.set_metadata(metadata_key(self.id), blob)
            # Starts the pool on every worker now, and on every worker that joins.
            self.client.register_plugin(NodePoolPlugin(self.id, blob), name=plugin_name(self.id))
        except BaseException:
            self._close()
            raise
        _live.add(self)

    # ------------------------------------------------------------------ engine

    @property
    def max_workers(self) -> int:
        """Processes per Dask worker: ``max_workers=``, or else the worker's thread count."""
        if self._per_node is not None:
            return self._per_node
        return max(self.client.nthreads().values(), default=1)

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown

    @property
    def manager_thread(self) -> threading.Thread | None:
        return None  # the work is on the cluster; Dask's threads resolve the futures

    def processes(self) -> dict[int, BaseProcess]:
        return {}  # none on this machine (see stats() for the nodes' processes)

    def broken_reason(self) -> str | None:
        return None

    def dumps(self, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> _transport.Payload:
        """Pickle a call; by value (cloudpickle) what a Dask worker could not import.

        Plain pickle is faster and names functions by reference; a call that
        mentions ``__main__`` (the client's script, which no worker has) or that
        plain pickle refuses (a lambda, a local function) is cloudpickled, as Dask
        does. What neither can pickle fails as on one machine, with the path to it.
        """
        try:
            made = _transport.dumps_call(fn, args, kwargs)
        except PicklingError as error:
            try:
                return bytes(cloudpickle.dumps((fn, args, kwargs)))
            except KeyboardInterrupt:
                raise
            except BaseException:
                raise error from None
        # A node's pool receives bytes: out-of-band buffers are joined in once, here.
        payload = made.wire() if isinstance(made, _transport.OutOfBandCall) else made
        stream = made.stream if isinstance(made, _transport.OutOfBandCall) else made
        if b"__main__" in stream:
            return bytes(cloudpickle.dumps((fn, args, kwargs)))
        return payload

    def submit(
        self, future: SafeFuture[Any], payload: _transport.Payload, timeout: float | None,
        dask_resources: Mapping[str, float] | None = None,
    ) -> None:
        assert isinstance(future, ClusterFuture)
        if isinstance(payload, _transport.OutOfBandCall):
            payload = payload.wire()
        with self._lock:
            self._check_accepting()
            call = next(self._calls)
            self._outstanding[call] = future
            self.counters.submitted += 1
        future._safepool = self
        future._engine = self
        future._call = call
        task = self.client.submit(
            run_on_node, self.id, call, payload, timeout, key=f"safepool-{self.id}-{call}",
            pure=False, resources=dict(dask_resources) if dask_resources else None,
        )
        future._dask = task
        with self._lock:
            self._by_key[task.key] = future
            self._finished.add(task)
            if self._collector is None:
                self._collector = threading.Thread(
                    target=self._collect, name="safepool-dask-results", daemon=True
                )
                self._collector.start()

    def reject(self, future: SafeFuture[Any], error: BaseException) -> None:
        with self._lock:
            self._check_accepting()
            self.counters.submitted += 1
            self.counters.failed += 1
        future._safepool = self
        future.set_exception(error)

    def _check_accepting(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    # ---------------------------------------------------------------- outcomes

    def _collect(self) -> None:
        """Thread "safepool-dask-results": settle the futures of Dask tasks as they end.

        The results of the tasks that ended together come in one ``gather``: a
        result fetched per task (a done-callback calling ``result()``) costs a
        round trip each, one after another, about 1.7x plain Dask's time for
        many small calls. The thread ends when no call is outstanding.
        """
        while True:
            for batch in self._finished.batches():
                self._settle_batch(batch)
            with self._lock:
                if self._finished.is_empty():
                    self._collector = None
                    return

    def _settle_batch(self, tasks: list[Any]) -> None:
        with self._lock:
            futures = [self._by_key.pop(task.key, None) for task in tasks]
        finished = [(t, f) for t, f in zip(tasks, futures, strict=True)
                    if f is not None and t.status == "finished"]
        try:
            outcomes = self.client.gather([t for t, _ in finished]) if finished else []
        except BaseException:  # one of them was lost meanwhile: take them one by one
            outcomes = None
        for i, (task, future) in enumerate(finished):
            if outcomes is None:
                self._arrived(future, task)
            else:
                try:
                    self._settle(future, outcomes[i])
                except BaseException as exc:
                    self._fail(future, exc)
        for task, other in zip(tasks, futures, strict=True):
            if other is not None and task.status != "finished":
                self._arrived(other, task)

    def _arrived(self, future: ClusterFuture, task: Any) -> None:
        """The call's Dask task ended; settle its future."""
        try:
            status = task.status
            if status == "finished":
                self._settle(future, task.result())
            elif status == "cancelled":
                if not future.done():  # not by us: the cluster dropped it
                    self._fail(future, BrokenProcessPool(
                        "the Dask cluster cancelled this call (was the client restarted or "
                        "the scheduler lost?); it may or may not have run"))
            else:
                error = task.exception()
                if isinstance(error, cf.CancelledError):  # tombstoned: settled already
                    return
                self._fail(future, error)
        except BaseException as exc:  # never let one call's outcome stop Dask's thread
            self._fail(future, exc)

    def _settle(self, future: ClusterFuture, outcome: tuple[Any, ...]) -> None:
        if outcome[0] == "reply":
            _, kind, body, pid = outcome
            future._worker_pid = pid
            if kind == _transport.OK:
                try:
                    value = pickle.loads(body)
                except BaseException as exc:  # only this future fails, as on one machine
                    self._fail(future, _transport.unloadable_result(exc))
                    return
                if self._claim(future, "completed"):
                    _set(future.set_result, value)
            else:
                self._fail(future, _transport.decode_error(memoryview(body), pid))
        else:
            _, error, cause = outcome
            if cause is not None and error.__cause__ is None:
                error.__cause__ = cause
            self._fail(future, error)

    def _fail(self, future: ClusterFuture, exc: BaseException) -> None:
        if isinstance(exc, cf.CancelledError) and future.cancelled():
            return
        if self._claim(future, _kind_of(exc)):
            _set(future.set_exception, exc)

    def _claim(self, future: ClusterFuture, kind: str) -> bool:
        """Take the right to settle ``future``, counting it as ``kind``; False if taken.

        Outcomes, stops and cancels race; the first to claim a call settles it,
        so every future resolves exactly once and is counted once.
        """
        with self._lock:
            if self._outstanding.pop(future._call, None) is None:
                return False
            setattr(self.counters, kind, getattr(self.counters, kind) + 1)
            return True

    # -------------------------------------------------------------- cancelling

    def _control(self, action: str, *args: Any) -> dict[str, Any]:
        """Run one control action on every worker; their answers by worker address."""
        answers = self.client.run(control, self.id, action, *args, on_error="ignore")
        return {address: a for address, a in answers.items() if a is not None}

    def cancel_calls(self, futures: Iterable[ClusterFuture]) -> int:
        """Cancel the calls that no node has started; how many were cancelled."""
        pending = [f for f in futures if not f.done() and not f.running()]
        if not pending:
            return 0
        started: set[int] = set()
        for answer in self._control("cancel", [f._call for f in pending]).values():
            started.update(call for call, what in answer.items() if what == "running")
        cancelled = []
        for future in pending:
            if future._call in started:
                future._mark_running()
            elif future._cancel_here():  # cancelled first: then no outcome can settle it
                self._claim(future, "cancelled")
                cancelled.append(future)
        self._release(cancelled)
        return len(cancelled)

    def _release(self, futures: list[ClusterFuture]) -> None:
        """Tell the scheduler to drop these calls' Dask tasks (they start nowhere)."""
        tasks = [f._dask for f in futures if f._dask is not None]
        if tasks and self.client.status == "running":
            try:
                self.client.cancel(tasks, reason="cancelled through safepool")
            except Exception:  # pragma: no cover - the client is closing
                pass

    def stop_task(self, future: SafeFuture[Any], reason: str) -> bool:
        assert isinstance(future, ClusterFuture)
        if future.cancelled():
            return True
        if future.done():
            return False
        verdict: tuple[str, Any] | None = None
        for answer in self._control("stop", [future._call], reason).values():
            what = answer.get(future._call)
            if what is not None and (verdict is None or what[0] != "finished"):
                verdict = what
        if verdict is None or verdict[0] == "cancelled":  # it started nowhere
            if future._cancel_here():
                self._claim(future, "cancelled")
                self._release([future])
                return True
            return future.cancelled()
        if verdict[0] == "stopped":
            exc = verdict[1] if verdict[1] is not None else TaskStoppedError(reason)
            if self._claim(future, "stopped"):
                _set(future.set_exception, exc)
                self._release([future])
            return True
        return False  # it finished; its outcome is on its way

    # ----------------------------------------------------------------- the end

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding.values())
        if cancel_futures and outstanding:
            self.cancel_calls(outstanding)
        if wait:
            cf.wait(outstanding)
            self._close()
        elif not self._closed:
            threading.Thread(
                target=self._close_when_done, args=(outstanding,), daemon=True,
                name="safepool-dask-shutdown",
            ).start()

    def _close_when_done(self, outstanding: list[ClusterFuture]) -> None:
        cf.wait(outstanding)
        self._close()

    def stop(self, reason: str, grace: float, wait: bool = True) -> None:
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding.values())
        running: set[int] = set()
        if not self._closed and self.client.status == "running":
            for answer in self._control("stop_all", reason, grace, wait).values():
                running.update(answer)
        for future in outstanding:
            if future._call in running:
                if self._claim(future, "stopped"):
                    _set(future.set_exception, PoolStoppedError(reason))
            elif future._cancel_here():
                self._claim(future, "cancelled")
        self._release(outstanding)
        self._close()

    def interrupt(self) -> None:
        try:
            self.stop("the client was interrupted (KeyboardInterrupt)", grace=self._kill_grace,
                      wait=False)
        except KeyboardInterrupt:  # a second Ctrl-C: leave the rest to the cluster
            pass

    def _close(self) -> None:
        """Unregister the plugin (each node's pool shuts down, its resources torn down)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._shutdown = True
        try:
            if self.client.status == "running":
                self.client.unregister_worker_plugin(plugin_name(self.id))
                self.client.set_metadata(metadata_key(self.id), None)
        except Exception:  # the cluster went away first: nothing left to tear down
            pass
        finally:
            if self._owns_client:
                self.client.close()

    # ------------------------------------------------------------------- stats

    def stats(self) -> Stats:
        workers: list[WorkerStats] = []
        recycled = dict(self.counters.recycled)
        running = queued = 0
        durations: list[TaskSeconds] = []  # measured by the nodes' pools: merged
        if not self._closed and self.client.status == "running":
            for reply in self._control("stats").values():
                rows, node_recycled, node_running, node_queued, *more = reply
                workers += rows
                for reason, n in node_recycled.items():
                    recycled[reason] = recycled.get(reason, 0) + n
                running += node_running
                queued += node_queued
                durations += more[:1]  # (a node of an older safepool sends none)
        with self._lock:
            counters = Counters()
            for name in Counters.__slots__:
                setattr(counters, name, getattr(self.counters, name))
            counters.recycled = recycled
            outstanding = len(self._outstanding)
        # Calls the scheduler holds count as queued: submitted, not yet on a node.
        queued = max(queued, outstanding - running)
        return Stats.of(
            counters, tuple(workers), queued, running, merge_task_seconds(durations)
        )


def _check_importable(settings: dict[str, Any]) -> None:
    """Refuse an initializer or resource hook that no pool process on a node could load.

    They reach the node's processes by plain pickle, by name; a name in
    ``__main__`` (the client's script) exists on no node, so it would fail every call.
    """
    try:
        blob = pickle.dumps((settings["initializer"], settings["initargs"], settings["resources"]))
    except Exception:  # checked by the executor already; what fails here fails there too
        return
    if b"__main__" in blob:
        raise ValueError(
            "the initializer or a resource hook is defined in __main__ (your script), which "
            "the Dask workers cannot import: move it into a module installed on every worker "
            "(calls may come from __main__; these must be importable by name)"
        )


def _kind_of(exc: BaseException) -> str:
    """The ``Stats`` counter a failed call counts in."""
    if isinstance(exc, TaskTimeoutError):
        return "timed_out"
    if isinstance(exc, WorkerCrashedError):
        return "crashed"
    if isinstance(exc, TaskStoppedError):  # stop_task(), terminate_workers(), Ctrl-C
        return "stopped"
    return "failed"


def _set(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except cf.InvalidStateError:  # settled already (a stop or a cancel raced the outcome)
        pass
