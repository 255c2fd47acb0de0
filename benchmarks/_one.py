"""One measurement in this fresh interpreter; prints exactly one JSON line on stdout.

    python -m benchmarks._one --executor safepool --workload submit --n 10000 \
        --method forkserver --workers 2

Workloads:

* ``submit``: ``n`` calls of ``noop`` submitted one by one, then every result
  waited for, on a warmed pool.
* ``map1`` / ``map100``: the same ``n`` calls through the executor's ``map``
  with chunksize 1 / 100, on a warmed pool.
* ``cold``: from constructing the executor to the first result of one ``noop``.

Only the work above is timed; the pool's shutdown is timed separately and
reported as ``shutdown_seconds``. Results are checked after the clock stops,
so a pool that loses or reorders results cannot post a time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from typing import Any

from benchmarks._executors import ADAPTERS, Adapter
from benchmarks.tasks import nap_pid, noop

WORKLOADS = ("submit", "map1", "map100", "cold")

#: Warm-up: rounds of short naps until every worker has answered at least once.
_WARM_NAP = 0.02
_WARM_ROUNDS = 50


def warm_up(adapter: Adapter, pool: Any, workers: int) -> int:
    """Run short tasks until ``workers`` distinct processes have run one; return how many did."""
    pids: set[int] = set()
    for _ in range(_WARM_ROUNDS):
        futures = [adapter.submit(pool, nap_pid, _WARM_NAP) for _ in range(3 * workers)]
        pids.update(f.result() for f in futures)
        if len(pids) >= workers:
            break
    # A few tiny tasks too, so the noop path itself has run once.
    for f in [adapter.submit(pool, noop, i) for i in range(2 * workers)]:
        f.result()
    return len(pids)


def measure(adapter: Adapter, workload: str, n: int, method: str, workers: int) -> dict[str, Any]:
    expected = list(range(n))
    adapter.load()  # imports are not part of any timing
    record: dict[str, Any] = {"version": adapter.version()}
    if workload == "cold":
        gc.collect()
        t0 = time.perf_counter()
        pool = adapter.create(workers, method)
        first = adapter.submit(pool, noop, 0).result()
        seconds = time.perf_counter() - t0
        ok = first == 0
    else:
        pool = adapter.create(workers, method)
        record["warm_workers"] = warm_up(adapter, pool, workers)
        gc.collect()
        if workload == "submit":
            t0 = time.perf_counter()
            futures = [adapter.submit(pool, noop, i) for i in expected]
            results = [f.result() for f in futures]
            seconds = time.perf_counter() - t0
        else:
            chunksize = int(workload.removeprefix("map"))
            t0 = time.perf_counter()
            results = list(adapter.map(pool, noop, expected, chunksize))
            seconds = time.perf_counter() - t0
        ok = results == expected
    record["start_method"] = adapter.start_method(pool, method)
    t1 = time.perf_counter()
    adapter.close(pool)
    record["shutdown_seconds"] = time.perf_counter() - t1
    if not ok:
        raise AssertionError(f"{workload}: the pool returned wrong results")
    record["seconds"] = seconds
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._one")
    parser.add_argument("--executor", required=True, choices=sorted(ADAPTERS))
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--method", default="forkserver")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    out: dict[str, Any] = {
        "executor": args.executor,
        "workload": args.workload,
        "n": 1 if args.workload == "cold" else args.n,
        "pid": os.getpid(),
    }
    adapter = ADAPTERS[args.executor]
    try:
        out.update(measure(adapter, args.workload, args.n, args.method, args.workers))
        out["status"] = "ok"
        code = 0
    except ImportError as exc:
        out["status"] = "skipped"
        out["error"] = f"{type(exc).__name__}: {exc}"
        code = 0
    except Exception as exc:
        traceback.print_exc()
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    print(json.dumps(out), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
