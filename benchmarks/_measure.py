"""One measurement in this fresh interpreter (run by ``benchmarks._one``); prints exactly
one JSON line on stdout.

    python -m benchmarks._one --executor safepool --workload submit --n 10000 \
        --method forkserver --workers 2

The line has ``status``: ``ok`` (with ``value``, ``metrics``, ``version``,
``start_method``, ``shutdown_seconds``), ``n/a`` (the executor has no such
feature; ``error`` says why), ``skipped`` (not installed) or ``error``.
What each workload times is in ``benchmarks._workloads``.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from typing import Any

from benchmarks._executors import ADAPTERS, Unsupported
from benchmarks._workloads import WORKLOADS, Params, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Params()
    parser = argparse.ArgumentParser(prog="python -m benchmarks._one")
    parser.add_argument("--executor", required=True, choices=sorted(ADAPTERS))
    parser.add_argument("--workload", required=True, choices=list(WORKLOADS))
    parser.add_argument("--n", type=int, default=defaults.n, help="tiny tasks")
    parser.add_argument("--method", default=defaults.method)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--recycle-n", type=int, default=defaults.recycle_n)
    parser.add_argument("--payload-n", type=int, default=defaults.payload_n)
    parser.add_argument("--cpu-n", type=int, default=defaults.cpu_n)
    parser.add_argument("--timeout-rounds", type=int, default=defaults.timeout_rounds)
    return parser.parse_args(argv)


def task_count(workload: str, p: Params) -> int:
    """How many tasks one measurement of ``workload`` runs (what "per task" divides by)."""
    return {
        "cold-spawn": 1,
        "cold-forkserver": 1,
        "recycle": p.recycle_n,
        "payload": p.payload_n,
        "cpu": p.cpu_n,
        "timeout": p.timeout_rounds,
    }.get(workload, p.n)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = Params(
        n=args.n,
        method=args.method,
        workers=args.workers,
        recycle_n=args.recycle_n,
        payload_n=args.payload_n,
        cpu_n=args.cpu_n,
        timeout_rounds=args.timeout_rounds,
    )
    out: dict[str, Any] = {
        "executor": args.executor,
        "workload": args.workload,
        "n": task_count(args.workload, params),
        "pid": os.getpid(),
    }
    adapter = ADAPTERS[args.executor]
    code = 0
    try:
        out.update(run(args.workload, adapter, params))
        out["version"] = adapter.version()
        out["status"] = "ok"
    except Unsupported as exc:
        out["status"] = "n/a"
        out["error"] = str(exc)
    except ImportError as exc:
        out["status"] = "skipped"
        out["error"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        traceback.print_exc()
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    print(json.dumps(out), flush=True)
    return code
