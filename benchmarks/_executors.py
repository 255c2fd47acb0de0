"""One small adapter per executor, each driving that executor through its own public API.

The executors' own modules are imported only by ``load()``, in the fresh
interpreter that measures them and before its clock starts; a missing package
shows up there as an ``ImportError`` (reported as "skipped"). Importing this
module imports none of them, so the driver can read the adapters' ``na``
reasons without paying for any executor.

An adapter raises ``Unsupported`` (or lists the workload in ``na``) when the
executor has no such feature; the report shows that as "n/a" with the reason.
"""

from __future__ import annotations

import importlib
import multiprocessing
import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: Why an executor cannot run the per-task timeout workload.
_NO_KILLING_TIMEOUT = (
    "no per-task timeout that stops the task (a timeout on result()/get() only stops waiting)"
)
_HOOKS_ONLY_SAFEPOOL = "resource before/after hooks are safepool's own feature"


class Unsupported(Exception):
    """The executor has no such feature; the message says why."""


class Adapter:
    """How to create, feed and close one kind of pool."""

    #: The module to import (outside any timed region).
    module = ""
    #: The distribution whose version is reported.
    distribution = ""
    #: Workload -> why this executor cannot run it (shown as n/a).
    na: dict[str, str] = {"hooks": _HOOKS_ONLY_SAFEPOOL}
    #: Workload -> a note the report prints under that workload's table.
    notes: dict[str, str] = {}
    #: True if a task limit per worker only applies to ``map`` (so ``recycle`` uses map).
    recycle_via_map = False
    #: Run at most this many tasks in ``recycle`` (None: all), for a pool too slow for more.
    recycle_cap: int | None = None

    def load(self) -> Any:
        """Import the executor's module; ``ImportError`` if it is not installed."""
        return importlib.import_module(self.module)

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.distribution or self.module)

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        """A new pool of ``workers`` processes started with ``method``.

        ``max_tasks_per_child``: retire each worker after that many tasks.
        ``timeouts``: the pool will be given per-task timeouts (some need to know).
        """
        raise NotImplementedError

    def start_method(self, pool: Any, method: str) -> str:
        """The start method the pool really uses (not just the one asked for)."""
        return method

    def submit(self, pool: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        """Schedule ``fn(arg)``; return a handle for ``result()``."""
        return pool.submit(fn, arg)

    def result(self, handle: Any) -> Any:
        """Block until the call behind ``handle`` is done; its value (or its exception)."""
        return handle.result()

    def map(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        return iter(pool.map(fn, items, chunksize=chunksize))

    def submit_with_timeout(
        self, pool: Any, fn: Callable[[Any], Any], arg: Any, timeout: float
    ) -> Any:
        """Schedule ``fn(arg)`` to be stopped after ``timeout`` seconds; a handle for result()."""
        raise Unsupported(self.na.get("timeout", _NO_KILLING_TIMEOUT))

    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        """What ``result()`` raises for a task stopped by its timeout."""
        raise Unsupported(self.na.get("timeout", _NO_KILLING_TIMEOUT))

    def close(self, pool: Any) -> None:
        pool.shutdown(wait=True)


class _ShipsWithPython(Adapter):
    """An executor (or the ceiling) that comes with Python: its version is Python's."""

    def version(self) -> str:
        return f"Python {platform.python_version()}"


class SafepoolAdapter(Adapter):
    module = "safepool"

    def load(self) -> Any:
        module = super().load()
        # safepool imports its public names on first use (PEP 562): import the
        # executor here, before any clock starts, as the other adapters do.
        _ = module.Executor
        return module
    na: dict[str, str] = {}
    notes = {
        "timeout": "safepool: `pool.options(timeout=0.25).submit(fn)`; `result()` raises "
        "`safepool.TaskTimeoutError`; the worker's process tree is killed.",
    }

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        # The start method is given by name, one of the ways safepool documents.
        return self.load().Executor(
            max_workers=workers, mp_context=method, max_tasks_per_child=max_tasks_per_child
        )

    def start_method(self, pool: Any, method: str) -> str:
        return str(pool.start_method)

    def submit_with_timeout(
        self, pool: Any, fn: Callable[[Any], Any], arg: Any, timeout: float
    ) -> Any:
        return pool.options(timeout=timeout).submit(fn, arg)

    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        return (self.load().TaskTimeoutError,)


class SafepoolHooksAdapter(SafepoolAdapter):
    """safepool with one resource whose ``before`` and ``after`` hooks run around every task."""

    notes: dict[str, str] = {}

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        from benchmarks import tasks

        safepool = self.load()
        resource = safepool.Resource(
            "bench",
            tasks.resource_setup,
            before=tasks.resource_before,
            after=tasks.resource_after,
        )
        return safepool.Executor(
            max_workers=workers,
            mp_context=method,
            max_tasks_per_child=max_tasks_per_child,
            resources=[resource],
        )


class StdlibAdapter(_ShipsWithPython):
    module = "concurrent.futures.process"
    na = {"timeout": _NO_KILLING_TIMEOUT, "hooks": _HOOKS_ONLY_SAFEPOOL}

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        context = multiprocessing.get_context(method)
        if max_tasks_per_child is None:
            return self.load().ProcessPoolExecutor(max_workers=workers, mp_context=context)
        if sys.version_info < (3, 11):
            raise Unsupported("max_tasks_per_child needs Python 3.11 or later")
        return self.load().ProcessPoolExecutor(
            max_workers=workers, mp_context=context, max_tasks_per_child=max_tasks_per_child
        )


class PebbleAdapter(Adapter):
    module = "pebble"
    notes = {
        "timeout": "pebble: `schedule(fn, args=..., timeout=0.25)`; `result()` raises "
        "`concurrent.futures.TimeoutError`; the worker is terminated.",
    }

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        context = multiprocessing.get_context(method)
        return self.load().ProcessPool(
            max_workers=workers, max_tasks=max_tasks_per_child or 0, context=context
        )

    def submit(self, pool: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        return pool.schedule(fn, args=(arg,))

    def map(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        # pebble's map returns a future whose result() is the iterator of results.
        return iter(pool.map(fn, items, chunksize=chunksize).result())

    def submit_with_timeout(
        self, pool: Any, fn: Callable[[Any], Any], arg: Any, timeout: float
    ) -> Any:
        return pool.schedule(fn, args=(arg,), timeout=timeout)

    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        import concurrent.futures

        return (concurrent.futures.TimeoutError,)

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()


class LokyAdapter(Adapter):
    module = "loky"
    na = {
        "timeout": _NO_KILLING_TIMEOUT,
        "recycle": "no per-worker task limit (loky's `timeout` only retires idle workers)",
        "hooks": _HOOKS_ONLY_SAFEPOOL,
    }

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        if max_tasks_per_child is not None:
            raise Unsupported(self.na["recycle"])
        loky = self.load()
        # loky's default start method is its own "loky" (fork+exec of a fresh
        # interpreter); its ``context`` argument takes the same method as the others.
        context = loky.backend.get_context(method)
        return loky.ProcessPoolExecutor(max_workers=workers, context=context)

    def start_method(self, pool: Any, method: str) -> str:
        context = getattr(pool, "_context", None)
        if context is not None and hasattr(context, "get_start_method"):
            return str(context.get_start_method())
        return "unknown"


class MultiprocessingPoolAdapter(_ShipsWithPython):
    module = "multiprocessing.pool"
    na = {"timeout": _NO_KILLING_TIMEOUT, "hooks": _HOOKS_ONLY_SAFEPOOL}

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        return multiprocessing.get_context(method).Pool(
            processes=workers, maxtasksperchild=max_tasks_per_child
        )

    def submit(self, pool: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        return pool.apply_async(fn, (arg,))

    def result(self, handle: Any) -> Any:
        return handle.get()

    def map(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        return iter(pool.map(fn, items, chunksize=chunksize))

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()


class BilliardAdapter(MultiprocessingPoolAdapter):
    module = "billiard"
    na = {"hooks": _HOOKS_ONLY_SAFEPOOL}
    notes = {
        "timeout": "billiard: `Pool(..., enable_timeouts=True)` and "
        "`apply_async(fn, args, timeout=0.25)` (its hard time limit); `get()` raises "
        "`billiard.exceptions.TimeLimitExceeded`; the worker is terminated. Its timeout "
        "thread looks once a second and counts from the worker's acknowledgement.",
        "recycle": "billiard: `maxtasksperchild=1`; its supervisor thread replaces exited "
        "workers only every 0.8 s, so it runs at most 40 recycle tasks (200 would take "
        "about 80 s per run); its time per task compares all the same.",
    }
    recycle_cap = 40

    def version(self) -> str:
        from importlib.metadata import version

        return version("billiard")

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        billiard = self.load()
        from billiard.pool import Pool

        # ``billiard.get_context(m).Pool`` does not pass ``enable_timeouts`` on, so the
        # class itself is given the context.
        return Pool(
            processes=workers,
            maxtasksperchild=max_tasks_per_child,
            enable_timeouts=timeouts,
            context=billiard.get_context(method),
        )

    def result(self, handle: Any) -> Any:
        from billiard.einfo import ExceptionWithTraceback

        try:
            return handle.get()
        except ExceptionWithTraceback as wrapped:
            # billiard's get() raises the task's exception wrapped; raise what it wraps.
            raise wrapped.exc from wrapped

    def submit_with_timeout(
        self, pool: Any, fn: Callable[[Any], Any], arg: Any, timeout: float
    ) -> Any:
        return pool.apply_async(fn, (arg,), timeout=timeout)

    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        from billiard.exceptions import TimeLimitExceeded

        return (TimeLimitExceeded,)


@dataclass
class _MpirePool:
    """An mpire WorkerPool and the ``worker_lifespan`` its map calls are given."""

    pool: Any
    lifespan: int | None


class MpireAdapter(Adapter):
    module = "mpire"
    recycle_via_map = True
    _map_note = (
        "mpire: `WorkerPool(keep_alive=True).map(fn, items, chunk_size=...)`, warmed up "
        "through map (a pool that ran apply_async fails in a later map)."
    )
    notes = {
        "timeout": "mpire: `apply_async(fn, args, task_timeout=0.25)`; `get()` raises "
        "`TimeoutError`. mpire interrupts the task with a signal (its worker survives) "
        "rather than killing the worker; its timeout thread looks every 0.1 s.",
        "recycle": "mpire: `map(noop, items, chunk_size=1, worker_lifespan=1)`: "
        "`worker_lifespan` is a map parameter (apply_async has none).",
        "map1": _map_note,
        "map100": _map_note,
    }

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        # keep_alive: without it every map call starts and stops the workers.
        pool = self.load().WorkerPool(n_jobs=workers, start_method=method, keep_alive=True)
        return _MpirePool(pool, max_tasks_per_child)

    def start_method(self, pool: Any, method: str) -> str:
        return str(pool.pool.pool_params.start_method)

    def submit(self, pool: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        return pool.pool.apply_async(fn, (arg,))

    def result(self, handle: Any) -> Any:
        return handle.get()

    def map(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        return iter(
            pool.pool.map(fn, list(items), chunk_size=chunksize, worker_lifespan=pool.lifespan)
        )

    def submit_with_timeout(
        self, pool: Any, fn: Callable[[Any], Any], arg: Any, timeout: float
    ) -> Any:
        return pool.pool.apply_async(fn, (arg,), task_timeout=timeout)

    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        return (TimeoutError,)

    def close(self, pool: Any) -> None:
        pool.pool.stop_and_join()
        pool.pool.terminate()


class DeadpoolAdapter(Adapter):
    module = "deadpool"
    distribution = "deadpool-executor"
    notes = {
        "map100": "deadpool: its `map` is `concurrent.futures.Executor.map`, which ignores "
        "chunksize (one task per item).",
        "timeout": "deadpool: `submit(fn, arg, deadpool_timeout=0.25)`; `result()` raises "
        "`deadpool.TimeoutError`; the worker kills its own process tree.",
    }

    def create(
        self,
        workers: int,
        method: str,
        *,
        max_tasks_per_child: int | None = None,
        timeouts: bool = False,
    ) -> Any:
        return self.load().Deadpool(
            max_workers=workers, mp_context=method, max_tasks_per_child=max_tasks_per_child
        )

    def start_method(self, pool: Any, method: str) -> str:
        return str(pool.ctx.get_start_method())

    def submit_with_timeout(
        self, pool: Any, fn: Callable[[Any], Any], arg: Any, timeout: float
    ) -> Any:
        return pool.submit(fn, arg, deadpool_timeout=timeout)

    def timeout_errors(self) -> tuple[type[BaseException], ...]:
        return (self.load().TimeoutError,)


class CeilingAdapter(_ShipsWithPython):
    """Not a pool: the raw ceiling (``benchmarks._ceiling``), plain Pipes and no pool logic."""

    module = "multiprocessing.connection"
    na: dict[str, str] = {}


#: Executor kind -> adapter. The driver may list one kind under several labels (A/A).
ADAPTERS: dict[str, Adapter] = {
    "safepool": SafepoolAdapter(),
    "safepool-hooks": SafepoolHooksAdapter(),
    "stdlib": StdlibAdapter(),
    "pebble": PebbleAdapter(),
    "loky": LokyAdapter(),
    "mp-pool": MultiprocessingPoolAdapter(),
    "billiard": BilliardAdapter(),
    "mpire": MpireAdapter(),
    "deadpool": DeadpoolAdapter(),
    "ceiling": CeilingAdapter(),
}
