"""``python -m benchmarks``: run every measurement in a fresh interpreter and report.

Prints the Markdown report on stdout (progress goes to stderr) and writes
``report.md``, ``results.json`` (every raw run) and ``charts/<workload>.png``
into ``--out`` (default ``benchmarks/results/<UTC timestamp>/``, git-ignored).
Measurement only: the exit code never depends on a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._entries import ENTRIES
from benchmarks._report import markdown, summarise
from benchmarks._runner import ROOT, measure_all
from benchmarks._workloads import WORKLOADS, Params

RESULTS = ROOT / "benchmarks" / "results"

#: The full run's sizes; every one can be changed on the command line.
FULL: dict[str, int] = {
    "n": 10_000,
    "reps": 3,
    "recycle_n": Params.recycle_n,
    "payload_n": Params.payload_n,
    "cpu_n": Params.cpu_n,
    "timeout_rounds": Params.timeout_rounds,
}
#: ``--quick``: smaller sizes, and the slowest entries and workloads left out.
QUICK: dict[str, int] = {
    "n": 2_000,
    "reps": 3,
    "recycle_n": 20,
    "payload_n": 10,
    "cpu_n": 10,
    "timeout_rounds": 3,
}
QUICK_LEFT_OUT_ENTRIES = ("loky", "billiard", "mpire", "deadpool")
QUICK_LEFT_OUT_WORKLOADS = ("cold-spawn",)


def _norm(text: str) -> str:
    return text.replace(" ", "").lower()


def _pick(
    parser: argparse.ArgumentParser, text: str | None, known: list[str], what: str
) -> list[str] | None:
    if not text:
        return None
    by_norm = {_norm(k): k for k in known}
    chosen = [_norm(part) for part in text.split(",") if part.strip()]
    unknown = [c for c in chosen if c not in by_norm]
    if unknown:
        parser.error(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if _norm(k) in chosen]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    labels = [e.label for e in ENTRIES]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare process-pool executors, each measurement in a fresh "
        "interpreter. Measurement only: nothing here passes or fails on a timing.",
    )
    parser.add_argument("--n", type=int, help=f"tiny tasks per workload (default {FULL['n']})")
    parser.add_argument(
        "--reps", type=int, help=f"repetitions, at least 3 (default {FULL['reps']})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes (N=2000), and "
        + ", ".join(QUICK_LEFT_OUT_ENTRIES + QUICK_LEFT_OUT_WORKLOADS)
        + " left out unless --executors/--workloads name them: about 2 minutes",
    )
    parser.add_argument(
        "--method",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="start method for every executor (the cold-* workloads use their own)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="max_workers (default: CPUs)"
    )
    parser.add_argument(
        "--executors", help="comma-separated labels (default all: " + ", ".join(labels) + ")"
    )
    parser.add_argument(
        "--workloads", help="comma-separated workloads (default all: " + ", ".join(WORKLOADS) + ")"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one measurement may take"
    )
    parser.add_argument("--recycle-n", type=int, help="tasks in `recycle` (default 200)")
    parser.add_argument("--payload-n", type=int, help="1 MiB tasks in `payload` (default 100)")
    parser.add_argument("--cpu-n", type=int, help="tasks in `cpu` (default 40)")
    parser.add_argument("--timeout-rounds", type=int, help="rounds in `timeout` (default 5)")
    parser.add_argument(
        "--out", type=Path, help="directory for report.md, results.json and charts/ "
        "(default: benchmarks/results/<UTC timestamp>/)"
    )  # fmt: skip
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    for key, default in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.reps < 3:
        parser.error("--reps must be at least 3 (a median of fewer says little)")
    if min(args.n, args.workers, args.recycle_n, args.payload_n, args.cpu_n) < 1:
        parser.error("--n, --workers and the workload sizes must be positive")
    if args.timeout_rounds < 1:
        parser.error("--timeout-rounds must be positive")

    entries = _pick(parser, args.executors, labels, "executor")
    workloads = _pick(parser, args.workloads, list(WORKLOADS), "workload")
    left_out: list[str] = []
    if args.quick and entries is None:
        entries = [label for label in labels if label not in QUICK_LEFT_OUT_ENTRIES]
        left_out += [f"the {label} entry" for label in QUICK_LEFT_OUT_ENTRIES]
    if args.quick and workloads is None:
        workloads = [w for w in WORKLOADS if w not in QUICK_LEFT_OUT_WORKLOADS]
        left_out += [f"the {w} workload" for w in QUICK_LEFT_OUT_WORKLOADS]
    if args.quick:
        left_out.append(
            "full sizes (" + ", ".join(f"{k}={FULL[k]}" for k in FULL if k != "reps") + ")"
        )
    args.entries = entries or labels
    args.workload_list = workloads or list(WORKLOADS)
    args.quick_left_out = "; ".join(left_out)
    return args


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return proc.stdout.strip()


def machine_info() -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--", "safepool"):
        commit += " + uncommitted changes"
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "safepool_commit": commit,
    }


def versions(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Executor kind -> the version its runs reported."""
    found: dict[str, str] = {}
    for r in runs:
        if "version" in r and r["executor"] != "safepool-hooks":
            found.setdefault(r["executor"], r["version"])
    return found


def start_methods(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Label -> the start method its pools really used (cold-* runs aside)."""
    found: dict[str, str] = {}
    for r in runs:
        if "start_method" in r and not r["workload"].startswith("cold-"):
            found.setdefault(r["label"], r["start_method"])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = datetime.now(timezone.utc)
    out_dir: Path = args.out or RESULTS / began.strftime("%Y%m%dT%H%M%SZ")
    load_before = os.getloadavg()
    info = machine_info()
    t0 = time.monotonic()
    measured = measure_all(args)
    elapsed = time.monotonic() - t0
    at_end = machine_info()["safepool_commit"]
    if at_end != info["safepool_commit"]:
        start = info["safepool_commit"]
        info["safepool_commit"] = f"{start} at the start, {at_end} at the end (changed meanwhile)"
    info["load_average_before"] = load_before
    info["load_average_after"] = os.getloadavg()
    runs = measured["runs"]
    na = measured["na"]
    payload: dict[str, Any] = {
        "started": began.isoformat(),
        "elapsed_seconds": elapsed,
        "machine": info,
        "config": {
            "n": args.n,
            "reps": args.reps,
            "method": args.method,
            "workers": args.workers,
            "recycle_n": args.recycle_n,
            "payload_n": args.payload_n,
            "cpu_n": args.cpu_n,
            "timeout_rounds": args.timeout_rounds,
            "quick": args.quick,
            "quick_left_out": args.quick_left_out,
            "entries": args.entries,
            "workloads": args.workload_list,
        },
        "versions": versions(runs),
        "start_methods": start_methods(runs),
        "skipped": measured["skipped"],
        "not_applicable": [
            {"label": label, "workload": workload, "reason": reason}
            for (label, workload), reason in na.items()
        ],
        "summary": summarise(runs, args.entries, args.workload_list, na, measured["skipped"]),
        "runs": runs,
        "priming_runs_discarded": measured["priming"],
    }
    report = markdown(payload)
    print(report)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(report)
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    try:
        from benchmarks._chart import write_charts

        write_charts(payload, out_dir / "charts")
    except ImportError as exc:
        print(f"No charts ({exc}): pip install matplotlib", file=sys.stderr)
    print(f"\nReport, raw results and charts: {out_dir}", file=sys.stderr)
    errors = sum(1 for r in runs if r.get("status") == "error")
    return 1 if errors and errors == len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
