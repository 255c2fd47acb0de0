"""The fault suite's long form: one executor, many batches of mixed outcomes, for minutes to hours.

    python -m benchmarks.soak --tasks 100000 [--method forkserver] [--workers 4]
                              [--max-tasks 50] [--batch 500] [--fault-rate 0.02] [--seed N]

Each batch draws its tasks' outcomes (mostly plain values; ``--fault-rate`` of them one of
the failure kinds of ``tests/fault_tasks.py``), submits them all to the same long-lived
executor and checks every future resolved exactly once with its outcome
(``tests/fault_run.py``). A progress bar shows the tasks done; every batch the parent's
memory is sampled. At the end the executor is shut down and checked for anything left
behind, and the counts are printed:

    tasks 100000 in 412.3s (242.5/s), batches 200, parent RSS 61.2 -> 63.0 MiB
    by outcome: completed 98012, failed 797, crashed 602, timed_out 389
    recycled: count 1890, memory 97, poisoned 101, crash 602, timeout 389, idle 0
    stats agree with the outcomes; nothing left behind

It exits with status 1 (and the failing check) on the first broken guarantee.
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import shutil
import sys
import tempfile
import time

import psutil

from safepool._progress import ProgressBar
from tests import fault_tasks
from tests.fault_run import Baseline, Calls, check_stats, fresh_worker_rss, make_executor, run_batch

FAULTS = [k for k in fault_tasks.KINDS if k != "value"]


def draw(rng: random.Random, count: int, fault_rate: float) -> list[str]:
    return [rng.choice(FAULTS) if rng.random() < fault_rate else "value" for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--method", default="forkserver", choices=["forkserver", "spawn"])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-tasks", type=int, default=50, help="max_tasks_per_child")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--fault-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"soak: {args.tasks} tasks, {args.method}, {args.workers} workers, "
          f"max_tasks_per_child {args.max_tasks}, fault rate {args.fault_rate}, seed {seed}")
    # The after-hook failures drawn on purpose are logged by the workers: keep them quiet.
    quiet = logging.getLogger("safepool")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    limit = fresh_worker_rss(args.method) + fault_tasks.GROW_MIB // 2 * 2**20
    scratch = tempfile.mkdtemp(prefix="safepool-soak-")
    bar = ProgressBar(args.tasks, "soak")  # before the baseline: tqdm makes a semaphore
    baseline = Baseline()
    calls = Calls()
    outcomes: collections.Counter[str] = collections.Counter()
    drawn: collections.Counter[str] = collections.Counter()
    me = psutil.Process()
    rss_start = me.memory_info().rss
    start = time.monotonic()
    pool = make_executor(args.method, args.workers, args.max_tasks, limit)
    batches = 0
    ok = False
    try:
        done = 0
        while done < args.tasks:
            kinds = draw(rng, min(args.batch, args.tasks - done), args.fault_rate)
            drawn.update(kinds)
            outcomes += run_batch(pool, kinds, scratch, calls, first_token=done)
            done += len(kinds)
            calls.forget_below(done)  # checked: keep no per-task state across batches
            batches += 1
            bar.advance(len(kinds), failed=False)
        stats = pool.stats()
        ok = True
    except AssertionError as exc:
        bar.close()
        print(f"FAILED after {batches} batches (seed {seed}): {exc}", file=sys.stderr)
        return 1
    finally:
        if ok:
            pool.shutdown(wait=True)
        else:
            pool.kill_workers()
    bar.close()
    elapsed = time.monotonic() - start
    twice = calls.twice()
    if twice:
        print(f"FAILED: futures resolved more than once: {twice}", file=sys.stderr)
        return 1
    try:
        check_stats(stats, outcomes, drawn)
        baseline.check_clean(scratch, drawn["grandchild_timeout"])
    except AssertionError as exc:
        print(f"FAILED (seed {seed}): {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rss_end = me.memory_info().rss
    print(f"tasks {args.tasks} in {elapsed:.1f}s ({args.tasks / elapsed:.1f}/s), batches "
          f"{batches}, parent RSS {rss_start / 2**20:.1f} -> {rss_end / 2**20:.1f} MiB")
    print("by outcome: " + ", ".join(f"{k} {outcomes[k]}"
                                     for k in ("completed", "failed", "crashed", "timed_out")))
    print("by kind: " + ", ".join(f"{k} {drawn[k]}" for k in fault_tasks.KINDS if drawn[k]))
    print("recycled: " + ", ".join(f"{k} {n}" for k, n in stats.recycled.items()))
    print("stats agree with the outcomes; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
