"""What ``Executor.stats()`` reports: counters kept by the manager, and the snapshot types.

The manager thread is the only writer of the counters (``submitted`` is
counted under the pool lock by the submitting thread), and readers take a
snapshot without locking: each number is exact, and once the pool is idle
they add up::

    submitted == completed + failed + timed_out + crashed + stopped + cancelled
                 + queued + running
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import psutil

__all__ = ["RECYCLE_REASONS", "Counters", "Stats", "WorkerStats", "rss_of"]

#: Why a worker was replaced: ``count`` (``max_tasks_per_child``), ``memory``
#: (``max_memory_per_child``), ``poisoned`` (``poison_worker()``, a failing hook
#: or ``poison_on``), ``crash`` (it died unexpectedly), ``timeout`` (killed with
#: a task that ran past its timeout), ``idle`` (``idle_timeout``), ``stopped`` (killed
#: with a task stopped by ``Executor.stop_task()``).
RECYCLE_REASONS = ("count", "memory", "poisoned", "crash", "timeout", "idle", "stopped")


class Counters:
    """Running totals of one pool."""

    __slots__ = (
        "cancelled", "completed", "crashed", "failed", "recycled", "stopped", "submitted",
        "timed_out",
    )

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.crashed = 0
        self.stopped = 0
        self.cancelled = 0
        self.recycled = dict.fromkeys(RECYCLE_REASONS, 0)


@dataclass(frozen=True)
class WorkerStats:
    """One worker process, as [`Executor.stats()`][safepool.Executor.stats] saw it.

    Attributes:
        pid: the worker's process id.
        state: ``"starting"``, ``"idle"``, ``"busy"``, ``"retiring"`` (exiting
            cleanly) or ``"killing"`` (being stopped).
        tasks: tasks this worker has finished.
        rss: its resident memory in bytes, read now (``None`` if it could not
            be read, e.g. it just exited).
        uptime: seconds since it was started.
        node: on a cluster, the address of the Dask worker it belongs to;
            ``None`` on one machine.
    """

    pid: int
    state: str
    tasks: int
    rss: int | None
    uptime: float
    node: str | None = None


@dataclass(frozen=True)
class Stats:
    """A snapshot of an executor's workers and totals since it was created.

    Once the executor is idle, every submitted task is counted in exactly one
    of ``completed``, ``failed``, ``timed_out``, ``crashed``, ``stopped``,
    ``cancelled``, ``queued`` or ``running``. A snapshot taken while tasks
    are finishing is not atomic: a task may briefly show in two of them, or
    in none (each number on its own is exact).

    Attributes:
        workers: one [`WorkerStats`][safepool.WorkerStats] per live worker process.
        submitted: tasks accepted by ``submit``/``map`` (a call refused at the
            call site, such as an unpicklable argument, is not counted).
        completed: tasks that returned a value.
        failed: tasks that raised, whose result could not be sent back, or
            that failed before starting (a broken executor, a resource that
            could not be set up).
        timed_out: tasks stopped by their timeout.
        crashed: tasks whose worker died under them.
        stopped: running tasks stopped by ``terminate_workers()``,
            ``kill_workers()`` or Ctrl-C.
        cancelled: tasks cancelled before they started.
        recycled: workers replaced, by reason: ``count``, ``memory``,
            ``poisoned``, ``crash``, ``timeout``, ``idle``, ``stopped``.
        queued: tasks waiting for a worker now.
        running: tasks running now.
    """

    workers: tuple[WorkerStats, ...]
    submitted: int
    completed: int
    failed: int
    timed_out: int
    crashed: int
    stopped: int
    cancelled: int
    recycled: Mapping[str, int] = field(default_factory=dict)
    queued: int = 0
    running: int = 0

    @classmethod
    def of(
        cls, counters: Counters, workers: tuple[WorkerStats, ...], queued: int, running: int
    ) -> Stats:
        return cls(
            workers=workers,
            submitted=counters.submitted,
            completed=counters.completed,
            failed=counters.failed,
            timed_out=counters.timed_out,
            crashed=counters.crashed,
            stopped=counters.stopped,
            cancelled=counters.cancelled,
            recycled=MappingProxyType(dict(counters.recycled)),
            queued=queued,
            running=running,
        )


def rss_of(proc: psutil.Process | None) -> int | None:
    """Resident memory of ``proc`` in bytes, or ``None`` if it is gone."""
    if proc is None:
        return None
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return None


def uptime_since(started: float) -> float:
    return max(0.0, time.monotonic() - started)


# Public as ``safepool.<name>``: so shown in tracebacks and reprs, and pickled by that name.
for _cls in (Stats, WorkerStats):
    _cls.__module__ = "safepool"
del _cls
