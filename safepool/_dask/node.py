"""The node side of safepool on Dask: one safepool pool in each Dask worker process.

A worker plugin ([`NodePoolPlugin`][]) starts the node's pool when the
executor registers it and shuts it down (resource teardown included) when the
executor unregisters it. Each call is a small Dask task, [`run_on_node`][],
that hands the pickled call to its node's pool and returns the pool's reply
as it came: the client unpickles it, so a result travels as bytes once and a
task's error never shows as a failed Dask task in the worker's log.

If the plugin is missing (it is not re-registered after a worker reconnects to
its scheduler, distributed#5125), the first call starts the pool from the
settings the executor also stored on the scheduler.

Everything here runs on the Dask worker's event loop (``run_on_node`` and
the control functions are coroutines): nothing in it blocks for long, and the
pool's own manager thread does the waiting.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from safepool._context import resolve_context
from safepool._errors import RemoteTraceback
from safepool._future import SafeFuture
from safepool._local import Pool
from safepool._stats import Stats, WorkerStats

__all__ = ["NodePoolPlugin", "control", "metadata_key", "plugin_name", "run_on_node"]

#: What a call's Dask task returns: ("reply", kind, body, pid): the worker's reply;
#: ("error", exception, cause): a failure the node's pool decided (timeout, crash...).
Reply = tuple[Any, ...]

_lock = threading.Lock()
#: The node pools in this Dask worker process, by executor id.
_pools: dict[str, NodePool] = {}
#: Executors shut down or stopped here: their late calls fail and start no pool. The
#: oldest are forgotten past _CLOSED_KEPT (a call that late finds no settings instead).
_closed: dict[str, None] = {}
_CLOSED_KEPT = 1024
#: Calls the client cancelled or stopped before they reached this node, by executor id:
#: if Dask still delivers one here, it does not start.
_tombstones: dict[str, set[int]] = {}


def plugin_name(executor_id: str) -> str:
    return f"safepool-{executor_id}"


def metadata_key(executor_id: str) -> list[str]:
    """Where the scheduler keeps the executor's pool settings (for a node without them)."""
    return ["safepool", executor_id]


class NodePool:
    """A Dask worker's safepool pool for one executor, and the calls it runs now."""

    def __init__(self, executor_id: str, settings: dict[str, Any], nthreads: int) -> None:
        settings = dict(settings)
        max_workers = settings.pop("max_workers") or nthreads
        context = resolve_context(settings.pop("start_method"))
        self.executor_id = executor_id
        self.pool = Pool(context=context, max_workers=max_workers, **settings)
        self.running: dict[int, SafeFuture[Any]] = {}  # by the client's call number

    def begin(self, call: int, payload: bytes, timeout: float | None) -> SafeFuture[Any] | None:
        """Queue a call in the pool; None if the client cancelled it already."""
        with _lock:
            tombstones = _tombstones.get(self.executor_id)
            if tombstones is not None and call in tombstones:
                tombstones.discard(call)
                return None
            future: SafeFuture[Any] = SafeFuture()
            self.running[call] = future
        self.pool.submit(future, payload, timeout, raw=True)
        return future

    def end(self, call: int) -> None:
        with _lock:
            self.running.pop(call, None)


def _allow_children() -> None:
    """Let this Dask worker start processes although the Nanny made it daemonic.

    A daemonic process may not have children (``distributed.worker.daemon``,
    True by default). The flag only guards ``Process.start`` in this process;
    what it protects against, children outliving the worker, the node's pool
    prevents itself: each of its processes dies with the worker (lifeline pipe).
    """
    process = multiprocessing.current_process()
    if process.daemon:
        process._config["daemon"] = False  # type: ignore[attr-defined]


def _start(executor_id: str, settings_blob: bytes, nthreads: int) -> NodePool:
    with _lock:
        node = _pools.get(executor_id)
        if node is not None:
            return node
        if executor_id in _closed:
            raise RuntimeError("this safepool executor was shut down")
        _allow_children()
        node = NodePool(executor_id, pickle.loads(settings_blob), nthreads)
        _pools[executor_id] = node
        return node


def _retire(executor_id: str) -> NodePool | None:
    """Mark an executor closed here and forget its pool and tombstones (under _lock)."""
    _closed[executor_id] = None
    if len(_closed) > _CLOSED_KEPT:
        del _closed[next(iter(_closed))]
    _tombstones.pop(executor_id, None)
    return _pools.pop(executor_id, None)


class NodePoolPlugin(WorkerPlugin):
    """Starts one executor's pool in every Dask worker, and shuts it down with the executor."""

    idempotent = True

    def __init__(self, executor_id: str, settings_blob: bytes) -> None:
        self.executor_id = executor_id
        self.name = plugin_name(executor_id)
        self.settings_blob = settings_blob

    def setup(self, worker: Any) -> None:
        _start(self.executor_id, self.settings_blob, worker.state.nthreads)

    async def teardown(self, worker: Any) -> None:
        with _lock:
            node = _retire(self.executor_id)
        if node is not None:
            # Waits for the pool's workers to run their resources' teardown and exit.
            await asyncio.get_running_loop().run_in_executor(
                None, node.pool.shutdown, True, True
            )


async def _node(executor_id: str) -> NodePool:
    node = _pools.get(executor_id)
    if node is not None:
        return node
    worker = get_worker()
    if executor_id in _closed:
        raise RuntimeError("this safepool executor was shut down")
    blob = await worker.scheduler.get_metadata(keys=metadata_key(executor_id), default=None)
    if blob is None:
        raise RuntimeError(
            "this Dask worker has no settings for this safepool executor: the scheduler "
            "lost them (was it restarted?); create the executor again"
        )
    node = _start(executor_id, blob, worker.state.nthreads)
    # Back in place, so that the executor's shutdown tears this pool down too.
    worker.plugins.setdefault(plugin_name(executor_id), NodePoolPlugin(executor_id, blob))
    return node


def _portable(exc: BaseException) -> tuple[BaseException, BaseException | None]:
    """``exc`` and its cause, each replaced by a RemoteTraceback if it would not pickle."""
    cause = exc.__cause__
    try:
        pickle.dumps(cause)
    except Exception:
        cause = RemoteTraceback(f"{type(cause).__name__}: {cause}\n")
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}"), cause
    return exc, cause


async def run_on_node(
    executor_id: str, call: int, payload: bytes, timeout: float | None
) -> Reply:
    """A Dask task: run one pickled call in this node's pool; return its outcome."""
    try:
        node = await _node(executor_id)
        future = node.begin(call, payload, timeout)
    except BaseException as exc:  # a broken or closed pool: that is this call's outcome
        return ("error", *_portable(exc))
    if future is None:
        raise CancelledError()  # the client already settled it; nobody reads this
    try:
        kind, body, pid = await asyncio.wrap_future(future)
    except BaseException as exc:
        return ("error", *_portable(exc))
    finally:
        node.end(call)
    return ("reply", kind, body, pid)


# ------------------------------------------------------------------ control
# Run on every Dask worker by Client.run: they answer from the event loop and
# leave the waiting to the pool's manager thread.


def _settled(future: SafeFuture[Any]) -> tuple[str, BaseException | None]:
    exc = future.exception() if future.done() and not future.cancelled() else None
    return ("stopped", exc) if exc is not None else ("finished", None)


def _lookup(executor_id: str, call: int) -> SafeFuture[Any] | None:
    """The node's future of ``call`` if it is here; else tombstone it (under _lock)."""
    node = _pools.get(executor_id)
    future = None if node is None else node.running.get(call)
    if future is None:
        _tombstones.setdefault(executor_id, set()).add(call)
    return future


def _cancel(executor_id: str, calls: list[int]) -> dict[int, str]:
    """Cancel calls that have not started here; tombstone the ones not here yet."""
    answer: dict[int, str] = {}
    for call in calls:
        with _lock:
            future = _lookup(executor_id, call)
        if future is None:
            continue
        if future.cancel():
            answer[call] = "cancelled"
        else:
            answer[call] = "running"
    return answer


def _stop(executor_id: str, calls: list[int], reason: str) -> dict[int, Any]:
    """Stop calls running here (their process tree is killed); tombstone the others."""
    answer: dict[int, Any] = {}
    node = _pools.get(executor_id)
    for call in calls:
        with _lock:
            future = _lookup(executor_id, call)
        if future is None or node is None:
            continue
        if node.pool.stop_task(future, reason):
            answer[call] = _settled(future) if not future.cancelled() else ("cancelled", None)
        else:
            answer[call] = ("finished", None)
    return answer


def _stop_all(executor_id: str, reason: str, grace: float, wait: bool) -> list[int]:
    """Stop this executor's pool here now, for good; the calls that were running."""
    with _lock:
        node = _retire(executor_id)
    if node is None:
        return []
    with _lock:
        running = [call for call, f in node.running.items() if f.running()]
    node.pool.stop(reason, grace=grace, wait=wait)
    return running


def _stats(executor_id: str, address: str) -> Any:
    node = _pools.get(executor_id)
    if node is None:
        return None
    stats: Stats = node.pool.stats()
    workers = [
        WorkerStats(w.pid, w.state, w.tasks, w.rss, w.uptime, node=address)
        for w in stats.workers
    ]
    return workers, dict(stats.recycled), stats.running, stats.queued, stats.task_seconds


_ACTIONS: dict[str, Callable[..., Any]] = {
    "cancel": _cancel, "stop": _stop, "stop_all": _stop_all, "stats": _stats,
}


async def control(executor_id: str, action: str, *args: Any, dask_worker: Any = None) -> Any:
    """Client.run target: one control action on this worker's pool for an executor."""
    if action == "stats":
        args = (dask_worker.address,)
    # stop_task and stop wait (briefly) for the pool's manager thread: not on the loop.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _ACTIONS[action], executor_id, *args)
