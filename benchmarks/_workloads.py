"""The workloads: what each one times, and how one measurement of it runs.

Every function here runs inside the fresh interpreter of one measurement
(``benchmarks._one``). It builds the pool, gets it ready outside the clock,
times only its workload, then times the pool's shutdown separately. Results
are compared with the expected ones after the clock stops (``WrongResults``),
so a pool that loses, reorders or corrupts results cannot post a number.

Every function returns a record with ``value`` (the workload's main number:
seconds, except ``rss``: bytes), ``metrics`` (the derived numbers: tasks/s,
MiB/s, efficiency, ...), ``start_method`` and ``shutdown_seconds``.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks import _ceiling, _memory
from benchmarks._executors import Adapter, CeilingAdapter, Unsupported
from benchmarks.tasks import burn, burn_timed, echo_bytes, nap_pid, noop, sleep_for

#: Warm-up: rounds of short naps until every worker has answered at least once.
_WARM_NAP = 0.02
_WARM_ROUNDS = 50
#: ``payload``: the size of the bytes sent to each task and sent back.
PAYLOAD_BYTES = 1 << 20
#: ``cpu``: the single-core CPU time each task burns.
CPU_TASK_SECONDS = 0.02
#: ``timeout``: the per-task timeout, and how long the task would sleep without it.
TASK_TIMEOUT = 0.25
_SLEEP = 10.0


class WrongResults(AssertionError):
    """The pool returned something other than the expected results."""


@dataclass(frozen=True)
class Params:
    """The sizes and settings of one measurement."""

    n: int = 10_000  # tiny tasks (submit, map1, map100, hooks, rss)
    method: str = "forkserver"
    workers: int = 2
    recycle_n: int = 200
    payload_n: int = 100
    cpu_n: int = 40
    timeout_rounds: int = 5


@dataclass(frozen=True)
class Workload:
    """One workload: its name, what it times and how the report shows it."""

    name: str
    title: str
    times: str  # what the clock covers, for the report and the README
    run: Callable[[Adapter, Params], dict[str, Any]]
    unit: str = "s"  # of ``value``: "s" or "bytes"
    baseline: str | None = "stdlib"  # the label every ratio is taken against
    tiny: bool = False  # the raw ceiling takes part


# ------------------------------------------------------------------ helpers


def warm_up(adapter: Adapter, pool: Any, workers: int, via_map: bool = False) -> set[int]:
    """Run short naps until ``workers`` distinct processes have run one; their pids.

    ``via_map``: warm through the executor's map instead of its submit (and
    mpire cannot run a map on a pool that ran apply_async).
    """
    pids: set[int] = set()
    naps = [_WARM_NAP] * (3 * workers)
    for _ in range(_WARM_ROUNDS):
        if via_map:
            pids.update(adapter.map(pool, nap_pid, naps, 1))
        else:
            pids.update(run_all(adapter, pool, nap_pid, naps))
        if len(pids) >= workers:
            break
    # A few tiny tasks too, so the noop path itself has run once.
    items = list(range(2 * workers))
    if via_map:
        list(adapter.map(pool, noop, items, 1))
    else:
        run_all(adapter, pool, noop, items)
    return pids


def run_all(
    adapter: Adapter, pool: Any, fn: Callable[[Any], Any], args: Sequence[Any]
) -> list[Any]:
    """Submit ``fn(a)`` for every ``a``, then wait for every result, in order."""
    handles = [adapter.submit(pool, fn, a) for a in args]
    return [adapter.result(h) for h in handles]


def _finish(adapter: Adapter, pool: Any, method: str, record: dict[str, Any]) -> dict[str, Any]:
    """Close the pool (timed on its own) and complete the record."""
    record["start_method"] = adapter.start_method(pool, method)
    t0 = time.perf_counter()
    adapter.close(pool)
    record["shutdown_seconds"] = time.perf_counter() - t0
    return record


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResults(f"{what}: the pool returned wrong results")


# ---------------------------------------------------------------- workloads


def tiny(adapter: Adapter, p: Params, *, chunksize: int | None = None) -> dict[str, Any]:
    """``p.n`` calls of ``noop(i)`` on a warm pool: submitted one by one then all waited
    for (``chunksize=None``), or through ``map`` with that chunksize."""
    expected = list(range(p.n))
    if isinstance(adapter, CeilingAdapter):
        ceiling = _ceiling.measure(p.n, p.workers, p.method)
        _check(ceiling.pop("results") == expected, "ceiling")
        ceiling.update(start_method=p.method, metrics={"tasks_per_s": p.n / ceiling["value"]})
        return ceiling
    pool = adapter.create(p.workers, p.method)
    # A map workload warms up through map: the same path it then times.
    via_map = chunksize is not None
    record: dict[str, Any] = {"warm_workers": len(warm_up(adapter, pool, p.workers, via_map))}
    gc.collect()
    if chunksize is None:
        t0 = time.perf_counter()
        results = run_all(adapter, pool, noop, expected)
        seconds = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        results = list(adapter.map(pool, noop, expected, chunksize))
        seconds = time.perf_counter() - t0
    _finish(adapter, pool, p.method, record)
    _check(results == expected, "tiny")
    record.update(value=seconds, metrics={"tasks_per_s": p.n / seconds})
    return record


def cold(adapter: Adapter, p: Params, *, method: str) -> dict[str, Any]:
    """From constructing the executor (with ``method``) to the first result of one ``noop``."""
    gc.collect()
    t0 = time.perf_counter()
    pool = adapter.create(p.workers, method)
    first = adapter.result(adapter.submit(pool, noop, 0))
    seconds = time.perf_counter() - t0
    record = _finish(adapter, pool, method, {})
    _check(first == 0, "cold")
    record.update(value=seconds, metrics={})
    return record


def recycle(adapter: Adapter, p: Params) -> dict[str, Any]:
    """``p.recycle_n`` calls of ``noop`` with every worker retired after one task.

    The pool first runs one task per worker outside the clock (so its
    machinery and a forkserver are up); then the clock covers submitting all
    the calls and waiting for every result, each on a freshly started worker.
    ``value`` is the time per task (so an executor capped at fewer tasks by
    ``Adapter.recycle_cap`` still compares); ``total_s`` the whole time.
    """
    count = min(p.recycle_n, adapter.recycle_cap or p.recycle_n)
    pool = adapter.create(p.workers, p.method, max_tasks_per_child=1)

    def run(items: list[int]) -> list[Any]:
        if adapter.recycle_via_map:
            return list(adapter.map(pool, noop, items, 1))
        return run_all(adapter, pool, noop, items)

    run(list(range(p.workers)))
    expected = list(range(count))
    gc.collect()
    t0 = time.perf_counter()
    results = run(expected)
    seconds = time.perf_counter() - t0
    record = _finish(adapter, pool, p.method, {"n": count})
    _check(results == expected, "recycle")
    record.update(
        value=seconds / count,
        metrics={"tasks_per_s": count / seconds, "total_s": seconds, "tasks": count},
    )
    return record


def recycle_cold(adapter: Adapter, p: Params) -> dict[str, Any]:
    """40 calls of ``noop`` with every worker retired after one task, timed from the
    executor's construction (its first workers' start included) to the last result."""
    count = min(40, adapter.recycle_cap or 40)
    expected = list(range(count))
    gc.collect()
    t0 = time.perf_counter()
    pool = adapter.create(p.workers, p.method, max_tasks_per_child=1)
    if adapter.recycle_via_map:
        results = list(adapter.map(pool, noop, expected, 1))
    else:
        results = run_all(adapter, pool, noop, expected)
    seconds = time.perf_counter() - t0
    record = _finish(adapter, pool, p.method, {"n": count})
    _check(results == expected, "recycle40")
    record.update(value=seconds, metrics={"tasks_per_s": count / seconds, "tasks": count})
    return record


def payload(adapter: Adapter, p: Params) -> dict[str, Any]:
    """``p.payload_n`` calls of ``echo_bytes`` on a warm pool, each sending 1 MiB of
    bytes to the worker and getting 1 MiB back (submit all, then wait for all)."""
    data = bytes(range(256)) * (PAYLOAD_BYTES // 256)
    pool = adapter.create(p.workers, p.method)
    record: dict[str, Any] = {"warm_workers": len(warm_up(adapter, pool, p.workers))}
    gc.collect()
    t0 = time.perf_counter()
    results = run_all(adapter, pool, echo_bytes, [data] * p.payload_n)
    seconds = time.perf_counter() - t0
    _finish(adapter, pool, p.method, record)
    _check(len(results) == p.payload_n and all(r == data for r in results), "payload")
    moved_mib = 2 * p.payload_n * PAYLOAD_BYTES / (1 << 20)  # in and out
    # This interpreter ran nothing before (each measurement has its own), so its peak
    # RSS is this run's: every payload held, sent and received, and the results kept.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    record.update(value=seconds, metrics={"mib_per_s": moved_mib / seconds, "peak_rss": peak})
    return record


def calibrate(target: float = CPU_TASK_SECONDS) -> tuple[int, float]:
    """(iterations of ``burn`` that take about ``target`` s of CPU here, their CPU time)."""

    def cpu_time(iterations: int) -> float:
        return burn_timed(iterations)[1]

    iterations = 10_000
    while (spent := cpu_time(iterations)) < target / 4:
        iterations *= 2
    iterations = max(1, round(iterations * target / spent))
    return iterations, statistics.median(cpu_time(iterations) for _ in range(5))


def cpu(adapter: Adapter, p: Params) -> dict[str, Any]:
    """``p.cpu_n`` calls of ``burn_timed`` (about 20 ms of pure-Python CPU each) on a warm pool.

    The work per task is calibrated in the parent before the clock. Each task
    also reports the CPU time it took where it ran (``thread_time``), and
    efficiency = (the tasks' summed CPU time / workers) / wall time: how close
    the pool came to keeping every worker's core busy with the work. (The
    CPU time is measured in the workers because on a shared or virtual
    machine the same loop's CPU time varies by tens of percent from one
    moment to the next: a figure taken once in the parent can make a pool
    look more than 100% efficient.)
    """
    pool = adapter.create(p.workers, p.method)
    record: dict[str, Any] = {"warm_workers": len(warm_up(adapter, pool, p.workers))}
    iterations, calibrated = calibrate()
    expected = burn(iterations)
    gc.collect()
    t0 = time.perf_counter()
    results = run_all(adapter, pool, burn_timed, [iterations] * p.cpu_n)
    seconds = time.perf_counter() - t0
    _finish(adapter, pool, p.method, record)
    _check([r[0] for r in results] == [expected] * p.cpu_n, "cpu")
    work = sum(r[1] for r in results)
    record.update(
        value=seconds,
        metrics={
            "efficiency": work / p.workers / seconds,
            "task_cpu_s": work / p.cpu_n,
            "calibrated_task_cpu_s": calibrated,
        },
    )
    return record


def timeout(adapter: Adapter, p: Params) -> dict[str, Any]:
    """With one worker, ``p.timeout_rounds`` times: a task that would sleep 10 s, with a
    0.25 s timeout, then a ``noop`` right after.

    ``value`` is the median lateness: when ``result()`` raised the timeout error
    minus (submit time + 0.25 s). ``next_task_s`` is the median time from that
    moment to the ``noop``'s result (a replacement worker, or the interrupted
    one, taking the next task).
    """
    errors = adapter.timeout_errors()  # Unsupported before any pool starts
    pool = adapter.create(1, p.method, timeouts=True)
    record: dict[str, Any] = {"warm_workers": len(warm_up(adapter, pool, 1))}
    late: list[float] = []
    next_task: list[float] = []
    outcomes: list[tuple[bool, Any]] = []
    for i in range(p.timeout_rounds):
        gc.collect()
        t0 = time.perf_counter()
        handle = adapter.submit_with_timeout(pool, sleep_for, _SLEEP, TASK_TIMEOUT)
        try:
            adapter.result(handle)
            timed_out = False
        except errors:
            timed_out = True
        t1 = time.perf_counter()
        value = adapter.result(adapter.submit(pool, noop, i))
        t2 = time.perf_counter()
        late.append(t1 - (t0 + TASK_TIMEOUT))
        next_task.append(t2 - t1)
        outcomes.append((timed_out, value))
    _finish(adapter, pool, p.method, record)
    _check(outcomes == [(True, i) for i in range(p.timeout_rounds)], "timeout")
    record.update(
        value=statistics.median(late),
        metrics={
            "next_task_s": statistics.median(next_task),
            "late_max_s": max(late),
            "next_task_max_s": max(next_task),
        },
    )
    return record


def rss(adapter: Adapter, p: Params) -> dict[str, Any]:
    """Memory after a warm pool ran the tiny ``submit`` workload (``p.n`` noops).

    ``value`` is the summed USS of the parent, the workers and the helpers;
    the metrics split it (and give RSS) per part. Nothing is timed.
    """
    pool = adapter.create(p.workers, p.method)
    workers = warm_up(adapter, pool, p.workers)
    expected = list(range(p.n))
    results = run_all(adapter, pool, noop, expected)
    gc.collect()
    memory = _memory.snapshot(workers)
    record = _finish(adapter, pool, p.method, {"warm_workers": len(workers)})
    _check(results == expected, "rss")
    record.update(value=float(memory["total_uss"]), metrics=memory)
    return record


def _tiny_submit(adapter: Adapter, p: Params) -> dict[str, Any]:
    return tiny(adapter, p)


def _map(chunksize: int) -> Callable[[Adapter, Params], dict[str, Any]]:
    def run(adapter: Adapter, p: Params) -> dict[str, Any]:
        return tiny(adapter, p, chunksize=chunksize)

    return run


def _cold(method: str) -> Callable[[Adapter, Params], dict[str, Any]]:
    def run(adapter: Adapter, p: Params) -> dict[str, Any]:
        return cold(adapter, p, method=method)

    return run


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "submit",
            "submit + result",
            "N tiny tasks (`noop(i)`) submitted one by one, then every result waited for, "
            "on a warm pool",
            _tiny_submit,
            tiny=True,
        ),
        Workload(
            "map1",
            "map, chunksize 1",
            "`list(map(noop, range(N), chunksize=1))` on a warm pool",
            _map(1),
            tiny=True,
        ),
        Workload(
            "map100",
            "map, chunksize 100",
            "`list(map(noop, range(N), chunksize=100))` on a warm pool",
            _map(100),
            tiny=True,
        ),
        Workload(
            "cold-spawn",
            "cold start, spawn",
            "constructing the executor with spawn, to the first result of one `noop`",
            _cold("spawn"),
        ),
        Workload(
            "cold-forkserver",
            "cold start, forkserver",
            "constructing the executor with forkserver, to the first result of one `noop`",
            _cold("forkserver"),
        ),
        Workload(
            "recycle",
            "recycle every task",
            "R `noop`s submitted at once with max_tasks_per_child=1 (or the executor's "
            "equivalent), every one on a freshly started worker; shown per task",
            recycle,
        ),
        Workload(
            "recycle40",
            "recycle, from construction",
            "40 `noop`s with max_tasks_per_child=1 (or the equivalent), timed from "
            "constructing the executor to the last result",
            recycle_cold,
        ),
        Workload(
            "payload",
            "1 MiB payloads",
            "P tasks each sent 1 MiB of bytes and returning them (1 MiB back), on a warm pool",
            payload,
        ),
        Workload(
            "cpu",
            "CPU-bound",
            "C tasks each burning ~20 ms of pure-Python CPU (calibrated before the clock), "
            "on a warm pool; efficiency = (the tasks' CPU time, measured where they ran, "
            "/ workers) / wall time",
            cpu,
        ),
        Workload(
            "timeout",
            "per-task timeout",
            "with 1 worker, a task that sleeps 10 s under a 0.25 s timeout, then a `noop`; "
            "repeated, medians of both",
            timeout,
            baseline=None,
        ),
        Workload(
            "hooks",
            "resource hooks",
            "the `submit` workload on safepool with a resource whose `before` and `after` "
            "hooks run around every task, against safepool without resources",
            _tiny_submit,
            baseline="safepool",
        ),
        Workload(
            "rss",
            "memory",
            "nothing; memory is read after a warm pool ran the `submit` workload: the "
            "parent's, the workers' and the helper processes' RSS and USS",
            rss,
            unit="bytes",
        ),
    )
}


def run(workload: str, adapter: Adapter, p: Params) -> dict[str, Any]:
    """One measurement of ``workload``; ``Unsupported`` if the executor has no such feature."""
    spec = WORKLOADS[workload]
    reason = adapter.na.get(workload)
    if reason:
        raise Unsupported(reason)
    if isinstance(adapter, CeilingAdapter) and not spec.tiny:
        raise Unsupported("the raw ceiling only takes part in the tiny-task workloads")
    adapter.load()  # imports are not part of any timing
    return spec.run(adapter, p)
