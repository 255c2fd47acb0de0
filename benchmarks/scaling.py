"""How throughput and the parent's CPU per task grow with the number of workers.

    python -m benchmarks.scaling [--workers 2,16,64] [--reps 3] [--method forkserver]

For each worker count, safepool and the stdlib's ProcessPoolExecutor (and the
stdlib again, the A/A control) each run, on a warm pool (every worker started
before the clock):

* ``tiny``: 4,000 ``noop`` calls submitted one by one, then every result;
* ``sleep5``: 20 calls per worker of a task that sleeps 5 ms (so 64 workers
  have work at once), submitted at once, then every result.

It reports the median wall time, tasks per second and the parent's CPU time per
task (``time.process_time()``: every thread of the parent, the pool's own
included). Measurement only: nothing passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

import safepool
from benchmarks.tasks import noop, sleep_for

TINY = 4000
SLEEP = 0.005
SLEEPS_PER_WORKER = 20


def _make(label: str, workers: int, method: str) -> Any:
    if label == "safepool":
        return safepool.Executor(workers, method)
    return cf.ProcessPoolExecutor(workers, mp_context=mp.get_context(method))


def _warm(pool: Any, workers: int) -> None:
    # Enough overlapping calls that every worker starts, then a burst of tiny ones.
    for f in [pool.submit(sleep_for, 0.2) for _ in range(workers)]:
        f.result()
    for f in [pool.submit(noop, i) for i in range(2 * workers)]:
        f.result()


def _run(pool: Any, workload: str, workers: int) -> tuple[float, float, int]:
    if workload == "tiny":
        calls = [(noop, i) for i in range(TINY)]
    else:
        calls = [(sleep_for, SLEEP) for _ in range(SLEEPS_PER_WORKER * workers)]
    c0, t0 = time.process_time(), time.perf_counter()
    futures = [pool.submit(fn, arg) for fn, arg in calls]
    for f in futures:
        f.result()
    return time.perf_counter() - t0, time.process_time() - c0, len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2,16,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--method", default="forkserver", choices=["forkserver", "spawn"])
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    labels = ["safepool", "stdlib", "stdlib (A/A)"]
    print(f"# scaling: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.method}, "
          f"{args.reps} reps, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| workers | workload | executor | wall (median) | tasks/s | parent CPU per task "
          "| vs stdlib |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for workers in counts:
        for workload in ("tiny", "sleep5"):
            walls: dict[str, list[float]] = {label: [] for label in labels}
            cpus: dict[str, list[float]] = {label: [] for label in labels}
            n = 0
            for rep in range(args.reps):
                order = labels[rep % 3:] + labels[:rep % 3]  # rotate: drift hits all alike
                for label in order:
                    pool = _make(label, workers, args.method)
                    try:
                        _warm(pool, workers)
                        wall, cpu, n = _run(pool, workload, workers)
                    finally:
                        pool.shutdown(wait=True)
                    walls[label].append(wall)
                    cpus[label].append(cpu)
            base = statistics.median(walls["stdlib"])
            for label in labels:
                wall = statistics.median(walls[label])
                cpu = statistics.median(cpus[label])
                print(f"| {workers} | {workload} | {label} | {wall * 1e3:.1f} ms | "
                      f"{n / wall:,.0f} | {cpu / n * 1e6:.1f} µs | {wall / base:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
