"""What an [`Executor`][safepool.Executor] needs from the engine that runs its tasks.

Two engines implement it, side by side: ``safepool._local`` (worker processes
on this machine, run by one manager thread) and ``safepool._dask`` (a
node-local pool of those in every worker of a Dask cluster). The executor
above them checks arguments, pickles calls and makes futures; the engine
runs the calls and resolves the futures, each exactly once.

This module imports nothing of either engine, and the future knows its engine
only as something it can interrupt, so the imports form no cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from safepool._future import SafeFuture
from safepool._stats import Stats
from safepool._transport import Payload

__all__ = ["Engine"]


class Engine(Protocol):
    """The engine behind one executor. Every method is safe from any thread."""

    #: The start method of its worker processes.
    context: BaseContext

    @property
    def max_workers(self) -> int:
        """The most worker processes at once (on a cluster: per Dask worker)."""

    @property
    def future_class(self) -> Callable[[], SafeFuture[Any]]:
        """What ``submit`` resolves: a SafeFuture, or a subclass the engine needs."""

    def dumps(self, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> Payload:
        """Pickle a call for this engine's workers; raise ``PicklingError`` naming the path."""

    def submit(
        self, future: SafeFuture[Any], payload: Payload, timeout: float | None,
        dask_resources: Mapping[str, float] | None = None,
    ) -> None:
        """Run the pickled call ``payload`` and resolve ``future`` with its outcome.

        ``dask_resources``: the Dask abstract resources the call needs (only an
        engine on a cluster is given any).

        Raises ``RuntimeError`` after shutdown, or the error that broke the engine.
        """

    def reject(self, future: SafeFuture[Any], error: BaseException) -> None:
        """Count ``future`` as submitted and failed with ``error`` (a call that could not
        be pickled); raise as ``submit`` would if no work is accepted."""

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Accept no more work; cancel what has not started if asked; wait if asked."""

    def stop(self, reason: str, grace: float, wait: bool = True) -> None:
        """Cancel pending tasks and stop running ones (``PoolStoppedError``), then end."""

    def interrupt(self) -> None:
        """Ctrl-C in the caller: stop everything this engine started, fast and quietly."""

    def stop_task(self, future: SafeFuture[Any], reason: str) -> bool:
        """Cancel ``future``'s task if it has not started, else stop it; False if it
        had already finished."""

    def stats(self) -> Stats:
        """A snapshot of the workers and the totals."""

    def processes(self) -> dict[int, BaseProcess]:
        """The live worker processes on this machine, by pid."""

    def broken_reason(self) -> str | None:
        """Why the engine accepts no more work because it broke, if it did."""

    @property
    def is_shutdown(self) -> bool:
        """Whether it no longer accepts work (shut down, stopped or interrupted)."""

    @property
    def manager_thread(self) -> threading.Thread | None:
        """The thread that runs the engine in this process, if one has started."""
