"""``safepool.Executor``: the public, ``concurrent.futures``-compatible face of a pool."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from functools import partial
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

from safepool._context import resolve_context
from safepool._engine import Engine
from safepool._errors import ForkWarning, PicklingError
from safepool._forkguard import warn_if_fork_unsafe
from safepool._future import SafeFuture
from safepool._local import Pool
from safepool._map import (
    check_buffersize,
    chunked,
    known_length,
    map_results,
    submit_first,
)
from safepool._mapcalls import MapCalls
from safepool._progress import ProgressBar
from safepool._resources import Resource, order_resources
from safepool._stats import Stats
from safepool._tracing import TaskSpan, dumps_traced
from safepool._transport import Payload, check_initargs, dumps_call
from safepool._validate import check_callable, check_positive_int, check_timeout

__all__ = ["Executor", "ExecutorView"]

T = TypeVar("T")
_UNSET: Any = object()


def _default_max_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


def _log_target(worker_logs: Any) -> bool | logging.Logger:
    if isinstance(worker_logs, (bool, logging.Logger)):
        return worker_logs
    if isinstance(worker_logs, str) and worker_logs:
        return logging.getLogger(worker_logs)
    raise TypeError(
        "worker_logs must be True, False, a logger name or a logging.Logger, "
        f"not {type(worker_logs).__name__} {worker_logs!r:.60}"
    )


def _spares(
    spare_workers: int | None, resources: tuple[Resource[Any], ...],
    initializer: Callable[..., object] | None, replaces: object,
) -> dict[str, Any]:
    """The pool's spare-worker settings for ``Executor(spare_workers=)``."""
    if spare_workers is not None:
        if isinstance(spare_workers, bool) or not isinstance(spare_workers, int):
            raise TypeError(f"spare_workers must be an int, not {type(spare_workers).__name__}")
        if spare_workers < 0:
            raise ValueError(f"spare_workers must be 0 or more, not {spare_workers}")
        return {"spare_workers": spare_workers, "spare_on_demand": False}
    light = not resources and initializer is None
    return {"spare_workers": int(light and bool(replaces)), "spare_on_demand": light}


def _check_dask_resources(
    resources: Mapping[str, float], engine: Engine
) -> Mapping[str, float]:
    if getattr(engine, "client", None) is None:
        raise ValueError(
            "dask_resources= applies only to an executor on a cluster "
            "(safepool.Executor(cluster=...))"
        )
    if not isinstance(resources, Mapping):
        raise TypeError(f"dask_resources must be a mapping, not {type(resources).__name__}")
    for name, amount in resources.items():
        if not isinstance(name, str) or isinstance(amount, bool) or not (
            isinstance(amount, (int, float)) and amount > 0
        ):
            raise ValueError(
                f"dask_resources maps resource names to positive amounts, e.g. {{'GPU': 1}}; "
                f"got {name!r}: {amount!r}"
            )
    return dict(resources)


def _timeout_of(fn: Callable[..., Any]) -> float | None:
    """The timeout a ``@safepool.task`` function carries, if any."""
    value = getattr(fn, "__safepool_timeout__", None)
    return value if isinstance(value, float) else None


class Executor(cf.Executor):
    """A process pool executor that is safe by default.

    A drop-in for `concurrent.futures.ProcessPoolExecutor`: the first
    five parameters have the stdlib's names and meanings; safepool's own are
    keyword-only.

    Args:
        max_workers: the most worker processes at once. The default is the
            stdlib's: ``os.process_cpu_count()`` on 3.13+, ``os.cpu_count()``
            before. Workers start on demand.
        mp_context: a multiprocessing context or a start-method name. Default:
            ``"forkserver"`` on Linux, ``"spawn"`` on macOS and Windows. The
            global start method is never read or set. ``"fork"`` is honoured,
            with a [`ForkWarning`][safepool.ForkWarning] if other threads are alive.
        initializer: called as ``initializer(*initargs)`` once in each worker
            before its first task. If it raises, the executor is broken, as in
            the stdlib ([`InitializerError`][safepool.InitializerError]).
        initargs: arguments for ``initializer``.
        max_tasks_per_child: replace a worker after it ran this many tasks
            (any start method, any value).
        timeout: default per-task timeout in seconds, counted from when the task
            starts running. On expiry the worker and every process the task
            started are stopped (SIGTERM, then SIGKILL after ``kill_grace``),
            the future fails with [`TaskTimeoutError`][safepool.TaskTimeoutError] and the
            worker is replaced. Per call: [`options()`][safepool.Executor.options].
        max_memory_per_child: replace a worker whose resident memory (RSS, in
            bytes) exceeds this after a task.
        kill_grace: seconds between SIGTERM and SIGKILL when a task's process
            tree is stopped.
        exit_timeout: seconds a retiring worker may take to exit cleanly before
            it is killed.
        resources: [`Resource`][safepool.Resource] objects each worker sets up
            once when it starts (in dependency order), resets around every
            task and tears down when it exits on purpose. Tasks get them with
            [`safepool.resource(name)`][safepool.resource].
        setup_backoff_max: the longest delay, in seconds, between attempts to
            start a worker after a resource failed to set up (the delay starts
            at 0.1 s and doubles).
        start_timeout: seconds a new worker may take to get ready (start the
            interpreter, run the initializer, set up its resources). One that
            takes longer is killed and counts as a failed resource setup
            ([`ResourceSetupError`][safepool.ResourceSetupError], backoff).
        idle_timeout: retire a worker that has been idle this many seconds
            (its resources are torn down); a new one starts when work comes.
            ``None`` (the default) keeps idle workers.
        worker_logs: where records logged in workers go. ``True`` (the
            default): to the parent's logger of the same name, so the parent's
            levels, filters and handlers apply. A logger or a logger name: all
            to that logger (``record.name`` keeps the worker's logger name).
            ``False``: no bridge; workers log as the start method leaves them.
        log_unretrieved: log (on the ``safepool`` logger, with the child
            traceback) the exception of a failed future nobody retrieved with
            ``result()`` or ``exception()``, when the future is garbage-collected
            or at interpreter exit.
        spare_workers: worker processes kept started and ready beyond those
            running tasks, so that a worker recycled (``max_tasks_per_child``,
            memory), stopped by a timeout or crashed is replaced at once, never
            after a process start; they run no task while ``max_workers`` tasks
            run. ``None`` (the default): one spare when the executor recycles
            workers or has a default ``timeout``, else one from the first time a
            task with a timeout starts or a worker is killed or crashes; none
            with ``resources`` or an ``initializer`` (they may hold connections:
            ask for spares explicitly, and count them in your connection
            budget). ``0``: none.
        cluster: run the calls on a Dask cluster instead of on this machine: a
            ``distributed.Client`` or a scheduler address such as
            ``"tcp://127.0.0.1:8786"`` (needs ``safepool[dask]``). Each Dask
            worker then runs a pool of its own with every setting above;
            ``max_workers`` is the number of processes per Dask worker (default:
            its thread count). See the [cluster guide](cluster.md).

    Raises:
        ValueError: ``max_workers`` < 1, an unknown start method, a
            non-positive timeout or limit.
        TypeError: arguments of the wrong type, a non-callable initializer.
        safepool.PicklingError: (not with ``fork``) the initializer or something
            in ``initargs`` cannot be sent to a worker; the message names the path
            to it, e.g. ``initargs[0].conn``. multiprocessing Queues and Locks,
            which cross as the worker starts, are accepted.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        max_memory_per_child: int | None = None,
        kill_grace: float = 0.5,
        exit_timeout: float = 10.0,
        resources: Iterable[Resource[Any]] = (),
        setup_backoff_max: float = 5.0,
        idle_timeout: float | None = None,
        start_timeout: float = 60.0,
        worker_logs: bool | str | logging.Logger = True,
        log_unretrieved: bool = True,
        spare_workers: int | None = None,
        cluster: Any = None,
    ) -> None:
        workers = check_positive_int(max_workers, "max_workers")
        context = resolve_context(mp_context)
        if initializer is not None:
            check_callable(initializer, "initializer")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        if initializer is not None and context.get_start_method() != "fork":
            # Fail here for a lambda or nested function, not in every worker.
            dumps_call(initializer, (), {}, fn_name="initializer")
        if initargs and context.get_start_method() != "fork":
            # Likewise for initargs, except multiprocessing objects that may only
            # cross when the process starts (a multiprocessing Queue or Lock).
            check_initargs(initargs)
        self._timeout = check_timeout(timeout)
        grace = check_timeout(kill_grace, "kill_grace") if kill_grace != 0 else 0.0
        ordered = order_resources(resources, check_pickling=context.get_start_method() != "fork")
        backoff_max = check_timeout(setup_backoff_max, "setup_backoff_max") or 5.0
        settings: dict[str, Any] = dict(
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=check_positive_int(max_tasks_per_child, "max_tasks_per_child"),
            max_memory_per_child=check_positive_int(max_memory_per_child, "max_memory_per_child"),
            kill_grace=grace or 0.0,
            exit_timeout=check_timeout(exit_timeout, "exit_timeout") or 10.0,
            resources=ordered,
            setup_backoff_max=backoff_max,
            idle_timeout=check_timeout(idle_timeout, "idle_timeout"),
            start_timeout=check_timeout(start_timeout, "start_timeout") or 60.0,
            worker_logs=_log_target(worker_logs),
            **_spares(spare_workers, ordered, initializer,
                      max_tasks_per_child or max_memory_per_child or timeout),
        )
        self._engine: Engine
        if cluster is not None:
            from safepool._dask import DaskEngine  # imports dask: only when asked for

            if context.get_start_method() == "fork":
                warnings.warn(
                    "mp_context='fork' on a cluster forks each Dask worker, which always runs "
                    "threads (its event loop, its comms): a lock held by one of them stays "
                    "locked in the worker process forever. Use 'forkserver' or 'spawn'.",
                    ForkWarning, stacklevel=2,
                )

            self._engine = DaskEngine(
                cluster, context=context, max_workers=workers, settings=settings,
                kill_grace=settings["kill_grace"],
            )
        else:
            warn_if_fork_unsafe(context, stacklevel=2)
            self._engine = Pool(
                context=context, max_workers=workers or _default_max_workers(), **settings
            )
        self._future_class = self._engine.future_class
        # The local engine pickles map's calls in its manager thread (safepool._mapcalls).
        self._submit_unpickled = (self._engine.submit_unpickled
                                  if isinstance(self._engine, Pool) else None)
        self._log_unretrieved = bool(log_unretrieved)
        # An executor dropped without shutdown() still releases its workers.
        weakref.finalize(self, self._engine.shutdown, False, False)

    # ------------------------------------------------------------------ public

    @property
    def max_workers(self) -> int:
        """The most worker processes this executor runs at once."""
        return self._engine.max_workers

    def stats(self) -> Stats:
        """A snapshot of the workers and of the task totals since the executor was made.

        Cheap enough to call often (tens of microseconds per worker, most of
        it one ``/proc`` read for its memory); safe from any thread.
        """
        return self._engine.stats()

    @property
    def start_method(self) -> str:
        """The start method of this executor's workers: forkserver, spawn or fork."""
        return self._engine.context.get_start_method()

    # Read-only views under the stdlib's private names, so code and tests written
    # against ProcessPoolExecutor's internals (CPython's own suite does) keep working.
    @property
    def _max_workers(self) -> int:
        return self._engine.max_workers

    @property
    def _mp_context(self) -> BaseContext:
        return self._engine.context

    @property
    def _processes(self) -> dict[int, BaseProcess]:
        return self._engine.processes()

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        # The thread that runs the pool (None until the first submit), as the stdlib's.
        return self._engine.manager_thread

    @property
    def _broken(self) -> str | bool:
        # Why the executor is broken (a failed initializer), or False, as the stdlib's.
        return self._engine.broken_reason() or False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker and return its future.

        ``fn`` and the arguments are pickled here, in the caller's thread. If
        one of them cannot be pickled, the call is not queued and the future
        returned has already failed with [`PicklingError`][safepool.PicklingError],
        which names the path to it (``args[0].engine.pool._lock``), as the
        stdlib puts its pickling error on the future. A ``KeyboardInterrupt``
        while pickling is raised here: it may be a real Ctrl-C.

        Raises:
            RuntimeError: after [`shutdown()`][safepool.Executor.shutdown].
            safepool.InitializerError: if the executor is broken.
            TypeError: if ``fn`` is not callable.
        """
        return self._submit(fn, args, kwargs, _UNSET)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool | str = False,
    ) -> Iterator[T]:
        """Like `map`(), run in the workers: an iterator of results, in order.

        ``timeout`` is an overall deadline for the iteration, counted from this
        call (``TimeoutError`` when it passes), not a per-task limit. A task's
        exception, or the [`PicklingError`][safepool.PicklingError] of a call
        that could not be sent, is raised when its result is reached. As with
        the stdlib, calls are pickled when they are sent (by the pool's manager
        thread), not here: don't change an argument after passing it.
        ``chunksize`` sends that many calls to a worker in one go; a per-task
        timeout then applies to each chunk.

        ``buffersize`` (Python 3.14's, on every version): ``None`` submits
        every call now, reading the whole input. An int *b* submits *b* chunks
        now and one more each time a result is taken, so at most *b* times
        ``chunksize`` items are read ahead and an endless iterator works. The
        iterator keeps this executor alive while it is used, so (unlike the
        stdlib's) results are never cut short by the executor being collected.

        ``progress=True`` (or a label) shows a progress bar that counts tasks
        as they finish: tqdm's if tqdm is installed, else a plain line on
        stderr. With a ``buffersize`` and inputs that have no ``len()``, the
        bar shows a count without a total.

        Raises:
            TypeError: ``fn`` is not callable, or ``chunksize`` or
                ``buffersize`` is not an int.
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
            RuntimeError: after [`shutdown()`][safepool.Executor.shutdown].
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, _UNSET, progress)

    def options(
        self,
        *,
        timeout: float | EllipsisType | None = ...,
        dask_resources: Mapping[str, float] | None = None,
    ) -> ExecutorView:
        """A view of this executor whose ``submit``/``map`` use these per-call options.

        The options never mix with the function's own keyword arguments:

        ```python
        pool.options(timeout=2).submit(fetch, url, timeout=30)  # fetch gets timeout=30
        ```

        ``timeout=None`` runs the calls without a timeout even when the
        executor or the task has a default.

        ``dask_resources`` (on a cluster only): the Dask abstract resources each
        call needs, e.g. ``{"GPU": 1}``; Dask runs it only on workers started
        with them (``dask worker --resources "GPU=2"``).

        Raises:
            ValueError: ``dask_resources`` on an executor that is not on a cluster,
                or a resource amount that is not a positive number.
        """
        placement = None
        if dask_resources is not None:
            placement = _check_dask_resources(dask_resources, self._engine)
        return ExecutorView(self, _UNSET if timeout is ... else check_timeout(timeout), placement)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work and release the workers once their tasks are done.

        Args:
            wait: block until every running and pending task has finished and
                every worker has exited.
            cancel_futures: cancel the futures that have not started yet.
        """
        self._shutdown(lambda: self._engine.shutdown(wait, cancel_futures))

    def terminate_workers(self) -> None:
        """Stop now: cancel pending tasks and stop running ones and their process trees.

        Running futures fail with [`PoolStoppedError`][safepool.PoolStoppedError],
        a `BrokenProcessPool`, as in Python 3.14. Each worker's
        whole process tree (what its task started too) gets SIGTERM, then
        SIGKILL after ``kill_grace``; this returns once the workers have exited
        (the stdlib's returns at once and never escalates). The executor is
        shut down: a later ``submit`` raises ``RuntimeError``.
        """
        self._shutdown(lambda: self._engine.stop("terminate_workers() was called", grace=1e9))

    def stop_task(self, future: cf.Future[Any]) -> bool:
        """Stop one task, running or not; the executor carries on.

        ``future.cancel()`` keeps the stdlib's meaning: it cancels a task that
        has not started and returns False for a running one. ``stop_task``
        also stops a running task: its worker and every process the task
        started get SIGTERM, then SIGKILL after ``kill_grace``; the future
        fails with [`TaskStoppedError`][safepool.TaskStoppedError] and the
        worker is replaced (its resources' teardown is skipped).

        Returns:
            True if the task was cancelled or stopped; False if it had
            already finished (its outcome stands).

        Raises:
            ValueError: if ``future`` was not returned by this executor.
        """
        if not isinstance(future, SafeFuture) or future._safepool is not self._engine:
            raise ValueError("stop_task() takes a future returned by this executor's submit/map")
        return self._engine.stop_task(future, "stop_task() was called")

    def kill_workers(self) -> None:
        """Like [`terminate_workers()`][safepool.Executor.terminate_workers], but SIGKILL now.

        Running futures fail with [`PoolStoppedError`][safepool.PoolStoppedError].
        """
        self._shutdown(lambda: self._engine.stop("kill_workers() was called", grace=0.0))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._engine.interrupt()
        else:
            self.shutdown(wait=True)
        return None

    # ----------------------------------------------------------------- asyncio

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker and await its result, from a coroutine.

        ``submit`` with the same timeouts and errors, awaited without blocking
        the event loop. Unlike ``loop.run_in_executor(pool, ...)``, whose
        cancellation only cancels a call that has not started, cancelling the
        awaiting task (``task.cancel()``, ``asyncio.timeout()``, a failing
        ``TaskGroup``) makes sure the call does not run on: a call not started
        never starts, and a running one is stopped as by
        [`stop_task()`][safepool.Executor.stop_task] (its process tree gets
        SIGTERM, then SIGKILL after ``kill_grace``, and the worker is replaced)
        before the ``CancelledError`` propagates. Per-call options:
        ``await pool.options(timeout=5).run(fn, x)``.

        Returns:
            What ``fn`` returned.

        Whatever ``fn`` raised is raised here, with its child traceback, and
        so is what ``submit`` raises. If the call's future is cancelled by
        someone else (``shutdown(cancel_futures=True)``), this raises
        ``asyncio.CancelledError``, as ``run_in_executor`` does.
        """
        from safepool import _aio

        return await _aio.call_result(self.stop_task, self.submit(fn, *args, **kwargs))

    def map_async(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool | str = False,
    ) -> AsyncIterator[T]:
        """Like [`map()`][safepool.Executor.map], for ``async for``: the results, in order.

        The calls are submitted now, as by ``map`` (every call, or the first
        ``buffersize`` chunks and one more per result taken); each result is
        awaited without blocking the event loop. A task's exception is raised
        at its result; ``timeout`` is one deadline for the whole iteration,
        counted from this call (``TimeoutError``).

        When the iteration ends before the last result, by a ``break``, an
        exception, a cancellation or the ``timeout``, nobody can read the
        remaining results, so the calls not started are cancelled and the
        running ones stopped, as by [`stop_task()`][safepool.Executor.stop_task].
        A ``break`` takes effect when the iterator is closed: at once with
        ``contextlib.aclosing()`` (or ``await it.aclose()``, even before the
        first result), else when it is garbage-collected (one dropped before
        its first result only cancels the calls not started, as ``map``). For
        results as they complete, use
        [`as_completed_async()`][safepool.as_completed_async] over ``submit``'s futures.

        Raises:
            TypeError: ``fn`` is not callable, or ``chunksize`` or
                ``buffersize`` is not an int.
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
            RuntimeError: after [`shutdown()`][safepool.Executor.shutdown].
        """
        return self._map_async(fn, iterables, timeout, chunksize, buffersize, _UNSET, progress)

    async def aclose(self, *, cancel_futures: bool = False) -> None:
        """``shutdown(wait=True)`` for coroutines: the event loop runs on while tasks finish.

        The waiting happens in a helper thread. If the awaiting task is
        cancelled meanwhile, the executor stops instead of waiting: calls not
        started are cancelled and running ones stopped, as by
        [`terminate_workers()`][safepool.Executor.terminate_workers], and then
        the ``CancelledError`` propagates.

        Args:
            cancel_futures: cancel the calls that have not started.
        """
        from safepool import _aio

        waiting = _aio.to_thread(partial(self.shutdown, True, cancel_futures=cancel_futures))
        try:
            await waiting
        except BaseException:
            if waiting.cancelled() or not waiting.done():  # we were cancelled, not shutdown
                await self._stop_now()
            raise

    async def _stop_now(self) -> None:
        """terminate_workers() from a helper thread, awaited; a second cancellation
        meanwhile does not interrupt it (the caller is raising one anyway)."""
        import asyncio

        from safepool import _aio

        try:
            await asyncio.shield(_aio.to_thread(self.terminate_workers))
        except asyncio.CancelledError:
            pass

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        """Leave ``async with``: [`aclose()`][safepool.Executor.aclose].

        If the block was left by a cancellation (``task.cancel()``, a timeout
        around it, Ctrl-C under ``asyncio.run``, which cancels the main task)
        nobody is left to wait for the results: the executor stops now, as by
        [`terminate_workers()`][safepool.Executor.terminate_workers], quietly.
        A ``KeyboardInterrupt`` stops it as with ``with``.
        """
        import asyncio

        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._engine.interrupt()
        elif exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            await self._stop_now()
        else:
            await self.aclose()
        return None

    # ---------------------------------------------------------------- internal

    def _shutdown(self, action: Callable[[], None]) -> None:
        try:
            action()
        except KeyboardInterrupt:
            self._engine.interrupt()
            raise

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Any,
        payload: Payload | None = None,
        placement: Mapping[str, float] | None = None,
        traced: TaskSpan | None = None,
    ) -> SafeFuture[T]:
        """Queue a call (``payload``: the call, already pickled, and ``traced`` its task
        span if it was pickled traced); a failed future if it cannot be pickled.

        With OpenTelemetry imported by the application and a span active, a call
        not yet pickled is traced: it runs in the worker under a "safepool.task"
        span, ended with its outcome when the future resolves (``safepool._tracing``).
        Without OpenTelemetry imported, the only added cost is one ``sys.modules`` lookup.
        """
        if not callable(fn):  # (this runs for every task: check_callable only to raise)
            check_callable(fn)
        if timeout is _UNSET:
            # _timeout_of(fn), inlined
            timeout = getattr(fn, "__safepool_timeout__", None)
            if not isinstance(timeout, float):
                timeout = self._timeout
        future: SafeFuture[T] = self._future_class()
        if self._log_unretrieved:
            future._report_unretrieved = True
            future._fn = fn  # named in the report, if there is one
        if payload is None:
            try:
                if "opentelemetry.trace" in sys.modules:  # in use: trace the call (_tracing)
                    payload, traced = dumps_traced(self._engine.dumps, fn, args, kwargs, timeout)
                else:
                    payload = self._engine.dumps(fn, args, kwargs)
            except PicklingError as error:
                self._engine.reject(future, error)
                return future
        try:
            if placement is None:
                self._engine.submit(future, payload, timeout)
            else:
                self._engine.submit(future, payload, timeout, placement)
        except BaseException as exc:
            if traced is not None:
                traced.end("rejected", exc)
            raise
        if traced is not None:
            traced.follow(future)
        return future

    def _map(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        task_timeout: Any,
        progress: bool | str = False,
        placement: Mapping[str, float] | None = None,
    ) -> Iterator[T]:
        submitter, calls, bar = self._map_calls(
            fn, iterables, timeout, chunksize, buffersize, task_timeout, progress, placement)
        return map_results(submitter, calls, timeout=timeout, buffersize=buffersize,
                           chunked=chunksize > 1, bar=bar)

    def _map_async(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        task_timeout: Any,
        progress: bool | str = False,
        placement: Mapping[str, float] | None = None,
    ) -> AsyncIterator[T]:
        from safepool import _aio

        submitter, calls, bar = self._map_calls(
            fn, iterables, timeout, chunksize, buffersize, task_timeout, progress, placement)
        pending, more = submit_first(submitter, calls, buffersize, bar)
        return _aio.map_results_async(self.stop_task, submitter, pending, more,
                                      timeout=timeout, chunked=chunksize > 1, bar=bar)

    def _map_calls(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        task_timeout: Any,
        progress: bool | str,
        placement: Mapping[str, float] | None,
    ) -> tuple[MapCalls, Iterator[Any], ProgressBar | None]:
        """Check a map's arguments; what submits its calls, the calls, the progress bar."""
        check_callable(fn)
        check_positive_int(chunksize, "chunksize", allow_none=False)
        check_buffersize(buffersize)
        check_timeout(timeout)
        if not isinstance(progress, (bool, str)):
            raise TypeError(f"progress must be a bool or a label, not {type(progress).__name__}")
        if task_timeout is _UNSET and _timeout_of(fn) is not None:
            task_timeout = _timeout_of(fn)
        single = len(iterables) == 1
        # Chunks of a map over one iterable hold its items themselves, not 1-tuples.
        calls: Iterator[Any] = (iter(iterables[0]) if single and chunksize > 1
                                else zip(*iterables, strict=False))
        bar = None
        if progress is not False:
            if buffersize is None:  # map reads the whole input now anyway
                listed = list(calls)
                total: int | None = len(listed)
                calls = iter(listed)
            else:
                total = known_length(iterables)
            label = progress if isinstance(progress, str) else getattr(fn, "__name__", None)
            bar = ProgressBar(total, label)
        if chunksize > 1:
            calls = chunked(calls, chunksize)
        # It holds this executor: the results' iterator keeps it alive (see safepool._map).
        timeout = self._timeout if task_timeout is _UNSET else task_timeout
        submitter = MapCalls(self, fn, chunked=chunksize > 1, single=single,
                             timeout=timeout, bar=bar, placement=placement)
        return submitter, calls, bar


class ExecutorView(cf.Executor):
    """An [`Executor`][safepool.Executor] with per-call options.

    Made by [`options()`][safepool.Executor.options].

    It shares the executor's workers. ``shutdown`` on a view does nothing: shut
    down the executor itself.
    """

    def __init__(
        self, executor: Executor, timeout: Any, placement: Mapping[str, float] | None = None
    ) -> None:
        self._executor = executor
        self._task_timeout = timeout
        self._placement = placement

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        """Like [`submit()`][safepool.Executor.submit], with this view's options."""
        return self._executor._submit(
            fn, args, kwargs, self._task_timeout, None, self._placement
        )

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool | str = False,
    ) -> Iterator[T]:
        """Like [`map()`][safepool.Executor.map], with this view's options.

        The iterator keeps the executor alive while it is used, so a view made
        for one call (``pool.options(timeout=5).map(...)``) is safe.
        """
        return self._executor._map(
            fn, iterables, timeout, chunksize, buffersize, self._task_timeout, progress,
            self._placement,
        )

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Like [`run()`][safepool.Executor.run], with this view's options."""
        from safepool import _aio

        return await _aio.call_result(self._executor.stop_task,
                                      self.submit(fn, *args, **kwargs))

    def map_async(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool | str = False,
    ) -> AsyncIterator[T]:
        """Like [`map_async()`][safepool.Executor.map_async], with this view's options."""
        return self._executor._map_async(
            fn, iterables, timeout, chunksize, buffersize, self._task_timeout, progress,
            self._placement,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Does nothing: a view does not own the workers."""


# Public as ``safepool.<name>``: so shown in tracebacks and reprs, and pickled by that name.
for _cls in (Executor, ExecutorView):
    _cls.__module__ = "safepool"
del _cls
