"""What ``Executor.stats()`` reports: counters kept by the manager, and the snapshot types.

The manager thread is the only writer of the counters (``submitted`` is
counted under the pool lock by the submitting thread), and readers take a
snapshot without locking: each number is exact, and once the pool is idle
they add up::

    submitted == completed + failed + timed_out + crashed + stopped + cancelled
                 + queued + running

The task duration histogram counts the tasks that ran in a worker and replied
(some of ``completed`` and ``failed``), so on one machine, once idle::

    task_seconds.count <= completed + failed

(less by the tasks that failed without running: a broken executor, a resource
that could not be set up).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import psutil

__all__ = [
    "RECYCLE_REASONS", "TASK_SECONDS_BOUNDS", "Counters", "Stats", "TaskSeconds", "WorkerStats",
    "merge_task_seconds", "rss_of",
]

#: Why a worker was replaced: ``count`` (``max_tasks_per_child``), ``memory``
#: (``max_memory_per_child``), ``poisoned`` (``poison_worker()``, a failing hook
#: or ``poison_on``), ``crash`` (it died unexpectedly), ``timeout`` (killed with
#: a task that ran past its timeout), ``idle`` (``idle_timeout``), ``stopped`` (killed
#: with a task stopped by ``Executor.stop_task()``).
RECYCLE_REASONS = ("count", "memory", "poisoned", "crash", "timeout", "idle", "stopped")


#: Upper bounds, in seconds, of the task duration histogram's buckets (a last
#: one, ``math.inf``, follows): from 1 ms to an hour, about three per decade.
TASK_SECONDS_BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)
_UPPER_BOUNDS = (*TASK_SECONDS_BOUNDS, math.inf)


class Counters:
    """Running totals of one pool."""

    __slots__ = (
        "cancelled", "completed", "crashed", "failed", "recycled", "stopped", "submitted",
        "task_seconds_counts", "task_seconds_sum", "timed_out",
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
        #: Tasks per bucket (not cumulative), the last one past every bound.
        self.task_seconds_counts = [0] * len(_UPPER_BOUNDS)
        self.task_seconds_sum = 0.0

    def record_seconds(self, seconds: float) -> None:
        """Count one task that ran ``seconds`` in its worker (the manager thread only)."""
        # bisect_left: a task of exactly a bound's length is in that bound's bucket (le).
        self.task_seconds_counts[bisect_left(TASK_SECONDS_BOUNDS, seconds)] += 1
        self.task_seconds_sum += seconds

    def task_seconds(self) -> TaskSeconds:
        """A snapshot of the duration histogram; its buckets agree with its count."""
        counts = self.task_seconds_counts.copy()  # one copy, so the buckets add up
        total = self.task_seconds_sum
        return TaskSeconds._of(counts, total)


@dataclass(frozen=True)
class TaskSeconds:
    """How long tasks ran in their workers: a histogram with fixed buckets.

    Measured in the worker with a monotonic clock: from unpickling the call,
    through the resources' ``before``/``after`` hooks and the function, to
    just before the reply (its result or exception) is pickled. Counts every task that
    ran and replied, whether it returned (``completed``) or raised
    (``failed``). Tasks killed in their worker (``timed_out``, ``stopped``,
    ``crashed``) have no measured duration and are not counted, nor are tasks
    that never ran.

    With ``map(..., chunksize=n)`` a task is a chunk of up to ``n`` calls, and
    its duration is the chunk's.

    Attributes:
        buckets: ``(upper bound in seconds, tasks that ran at most that long)``
            pairs, cumulative, by ascending bound. The bounds are fixed: 0.001,
            0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
            30, 60, 120, 300, 600, 1800 and 3600, then ``math.inf``, whose
            count equals ``count``.
        sum: the total run time of the counted tasks, in seconds. Read just
            after the buckets: while tasks finish it may already include one
            the buckets do not show yet.
        count: how many tasks were measured.
    """

    buckets: tuple[tuple[float, int], ...] = tuple((bound, 0) for bound in _UPPER_BOUNDS)
    sum: float = 0.0
    count: int = 0

    @classmethod
    def _of(cls, counts: Iterable[int], total: float) -> TaskSeconds:
        """From per-bucket (not cumulative) counts, one per bound and one past them."""
        buckets = []
        running = 0
        for bound, n in zip(_UPPER_BOUNDS, counts, strict=True):
            running += n
            buckets.append((bound, running))
        return cls(tuple(buckets), total, running)


def merge_task_seconds(parts: Iterable[TaskSeconds]) -> TaskSeconds:
    """Add up histograms with the same bounds (the pools of a cluster's nodes)."""
    counts = [0] * len(_UPPER_BOUNDS)
    total = 0.0
    for part in parts:
        if tuple(bound for bound, _ in part.buckets) != _UPPER_BOUNDS:
            continue  # another safepool version's bounds: cannot be added bucket by bucket
        below = 0
        for i, (_, cumulative) in enumerate(part.buckets):
            counts[i] += cumulative - below
            below = cumulative
        total += part.sum
    return TaskSeconds._of(counts, total)


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
        stopped: running tasks stopped by ``stop_task()`` (a cancelled
            ``await pool.run()`` too), ``terminate_workers()``,
            ``kill_workers()`` or Ctrl-C.
        cancelled: tasks cancelled before they started.
        recycled: workers replaced, by reason: ``count``, ``memory``,
            ``poisoned``, ``crash``, ``timeout``, ``idle``, ``stopped``.
        queued: tasks waiting for a worker now.
        running: tasks running now.
        task_seconds: how long the tasks that ran and replied took in their
            workers, as a [`TaskSeconds`][safepool.TaskSeconds] histogram (tasks
            that timed out, were stopped or crashed are not in it). On a
            cluster, the sum of the nodes' pools that are up now.
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
    task_seconds: TaskSeconds = field(default_factory=TaskSeconds)

    @classmethod
    def of(
        cls,
        counters: Counters,
        workers: tuple[WorkerStats, ...],
        queued: int,
        running: int,
        task_seconds: TaskSeconds | None = None,
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
            task_seconds=counters.task_seconds() if task_seconds is None else task_seconds,
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
for _cls in (Stats, TaskSeconds, WorkerStats):
    _cls.__module__ = "safepool"
del _cls
