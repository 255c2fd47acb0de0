"""``python -m benchmarks``: run every measurement in a fresh interpreter and report.

Per repetition and workload, the executors run one after the other in an order
that rotates by one place each repetition, so none is always first or last.
The stdlib is measured twice, as two separate entries ("stdlib" and
"stdlib (A/A)"): any difference between those two is noise, and puts the other
ratios in proportion.

Prints a Markdown table on stdout (progress goes to stderr) and writes every
raw result to ``benchmarks/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._executors import ADAPTERS
from benchmarks._one import WORKLOADS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

#: (label, executor kind). The stdlib twice: the A/A control.
ENTRIES: tuple[tuple[str, str], ...] = (
    ("safepool", "safepool"),
    ("stdlib", "stdlib"),
    ("stdlib (A/A)", "stdlib"),
    ("pebble", "pebble"),
    ("loky", "loky"),
)
BASELINE = "stdlib"
AA_CONTROL = "stdlib (A/A)"

WORKLOAD_TITLES = {
    "submit": "submit + result",
    "map1": "map, chunksize 1",
    "map100": "map, chunksize 100",
    "cold": "cold start",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare process-pool executors on tiny tasks, each run in a fresh "
        "interpreter. Measurement only: nothing here passes or fails on a timing.",
    )
    parser.add_argument("--n", type=int, help="tasks per warm workload (default 10000)")
    parser.add_argument("--reps", type=int, help="repetitions, at least 3 (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="N=2000 and 3 repetitions unless --n/--reps say"
    )
    parser.add_argument(
        "--method",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="start method for safepool, the stdlib and pebble (loky uses its own)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="max_workers (default: CPUs)"
    )
    parser.add_argument(
        "--executors",
        help="comma-separated labels to run (default all: "
        + ", ".join(label for label, _ in ENTRIES)
        + ")",
    )
    parser.add_argument(
        "--workloads", help="comma-separated workloads (default all: " + ", ".join(WORKLOADS) + ")"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one measurement may take"
    )
    args = parser.parse_args(argv)
    args.n = args.n if args.n is not None else (2000 if args.quick else 10_000)
    args.reps = args.reps if args.reps is not None else (3 if args.quick else 5)
    if args.reps < 3:
        parser.error("--reps must be at least 3 (a median of fewer says little)")
    if args.n < 1 or args.workers < 1:
        parser.error("--n and --workers must be positive")
    args.entries = _pick(parser, args.executors, [label for label, _ in ENTRIES], "executor")
    args.workload_list = _pick(parser, args.workloads, list(WORKLOADS), "workload")
    return args


def _pick(
    parser: argparse.ArgumentParser, text: str | None, known: list[str], what: str
) -> list[str]:
    if not text:
        return known
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        parser.error(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if k in chosen]


# ------------------------------------------------------------------ running


def run_one(kind: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its JSON line, or an error record."""
    cmd = [
        sys.executable, "-m", "benchmarks._one",
        "--executor", kind, "--workload", workload, "--n", str(args.n),
        "--method", args.method, "--workers", str(args.workers),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    started = time.monotonic()
    # Its own session, so that on a timeout its whole process group (the
    # interpreter, a forkserver, workers that stayed in the group) can be killed.
    with subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"executor": kind, "workload": workload, "status": "error",
                    "error": f"no result within --timeout {args.timeout:g} s"}  # fmt: skip
    record: dict[str, Any]
    lines = stdout.strip().splitlines()
    try:
        record = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        record = {"executor": kind, "workload": workload, "status": "error",
                  "error": f"exit code {proc.returncode} and no JSON line"}  # fmt: skip
    record["wall_seconds"] = time.monotonic() - started
    if proc.returncode != 0 or record.get("status") == "error":
        record["status"] = "error"
        record["stderr_tail"] = stderr[-2000:]
    return record


def measure_all(
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Every (repetition, workload, executor) measurement, in rotating executor order.

    Returns the measurements, the discarded priming runs and the skipped labels.
    """
    kinds = dict(ENTRIES)
    skipped: dict[str, str] = {}
    for label in args.entries:
        module = ADAPTERS[kinds[label]].module
        if importlib.util.find_spec(module.split(".")[0]) is None:
            skipped[label] = f"{module} is not installed"

    # One discarded run per executor kind first, so no entry pays for a cold disk cache.
    priming: list[dict[str, Any]] = []
    for kind in dict.fromkeys(kinds[label] for label in args.entries if label not in skipped):
        print(f"priming {kind} ...", file=sys.stderr, flush=True)
        record = run_one(kind, "cold", args)
        priming.append(record)
        if record.get("status") == "skipped":
            for label in args.entries:
                if kinds[label] == kind:
                    skipped[label] = record.get("error", "skipped")

    active = [label for label in args.entries if label not in skipped]
    total = args.reps * len(args.workload_list) * len(active)
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        shift = rep % len(active) if active else 0
        order = active[shift:] + active[:shift]
        for workload in args.workload_list:
            for position, label in enumerate(order):
                record = run_one(kinds[label], workload, args)
                record.update(label=label, rep=rep, position=position)
                runs.append(record)
                shown = (
                    f"{record['seconds'] * 1e3:.1f} ms"
                    if record.get("status") == "ok"
                    else record.get("error", "?")
                )
                print(
                    f"[{len(runs)}/{total}] rep {rep + 1} {workload:<7} {label:<13} {shown}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs, priming, skipped


# ---------------------------------------------------------------- reporting


def summarise(runs: list[dict[str, Any]], labels: list[str], workloads: list[str]) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for workload in workloads:
        medians: dict[str, float] = {}
        for label in labels:
            mine = [r for r in runs if r["label"] == label and r["workload"] == workload]
            ok = [r["seconds"] for r in mine if r.get("status") == "ok"]
            row: dict[str, Any] = {
                "workload": workload,
                "label": label,
                "count": len(ok),
                "errors": len(mine) - len(ok),
            }
            if ok:
                medians[label] = statistics.median(ok)
                row.update(
                    median=medians[label],
                    min=min(ok),
                    max=max(ok),
                    n=mine[0].get("n"),
                    shutdown_median=statistics.median(
                        r["shutdown_seconds"] for r in mine if r.get("status") == "ok"
                    ),
                )
            rows.append(row)
        base = medians.get(BASELINE)
        for row in rows:
            if row["workload"] == workload and "median" in row and base:
                row["ratio"] = row["median"] / base
    return rows


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def _per_task(row: dict[str, Any]) -> str:
    if row["workload"] == "cold" or not row.get("n"):
        return "—"
    return f"{row['median'] / row['n'] * 1e6:.1f} µs"


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| workload | executor | median | min | max | vs stdlib | per task | shutdown |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        title = WORKLOAD_TITLES[row["workload"]]
        if "median" not in row:
            out.append(f"| {title} | {row['label']} | failed ({row['errors']}) | | | | | |")
            continue
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
        note = f" ({row['errors']} failed)" if row["errors"] else ""
        out.append(
            f"| {title} | {row['label']}{note} | {_ms(row['median'])} | {_ms(row['min'])} "
            f"| {_ms(row['max'])} | {ratio} | {_per_task(row)} | {_ms(row['shutdown_median'])} |"
        )
    return "\n".join(out)


def aa_note(rows: list[dict[str, Any]]) -> str | None:
    parts = []
    for row in rows:
        if row["label"] == AA_CONTROL and "ratio" in row:
            parts.append(f"{WORKLOAD_TITLES[row['workload']]} {100 * (row['ratio'] - 1):+.0f}%")
    if not parts:
        return None
    return (
        "A/A control (the stdlib against itself, same code, separate runs): "
        + ", ".join(parts)
        + ". Differences between executors that are not clearly larger than these are noise."
    )


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
        commit += " + local changes"
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "safepool_commit": commit,
    }


def versions(runs: list[dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for r in runs:
        if "version" in r:
            found.setdefault(r["executor"], r["version"])
    return found


def start_methods(runs: list[dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for r in runs:
        if "start_method" in r:
            found.setdefault(r["label"], r["start_method"])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    runs, priming, skipped = measure_all(args)
    elapsed = time.monotonic() - t0
    load_after = os.getloadavg()
    labels = [label for label in args.entries if label not in skipped]
    rows = summarise(runs, labels, args.workload_list)
    info = machine_info()
    info["load_average_1_5_15_before"] = load_before
    info["load_average_1_5_15_after"] = load_after
    found_versions = versions(runs)
    methods = start_methods(runs)

    header = [
        f"Machine: {info['cpus']} CPUs, {info['platform']}; "
        f"{info['implementation']} {info['python']}. Load average (1 min) "
        f"{load_before[0]:.2f} before the run, {load_after[0]:.2f} after it.",
        f"Start method: {args.method} for safepool, the stdlib and pebble; loky uses its own "
        f"({methods.get('loky', 'loky')}). max_workers={args.workers}. "
        f"N={args.n} tasks per warm workload, {args.reps} repetitions, "
        "each measurement in a fresh interpreter.",
        "Versions: "
        + ", ".join(f"{kind} {v}" for kind, v in sorted(found_versions.items()))
        + f"; safepool at {info['safepool_commit']}.",
    ]
    print("\n\n".join(header))
    print()
    print(markdown(rows))
    print()
    note = aa_note(rows)
    if note:
        print(note)
        print()
    for label, reason in skipped.items():
        print(f"Skipped {label}: {reason}.")
    print(
        "Median, min and max over the repetitions; vs stdlib = this median / the stdlib's "
        "median in the same run; shutdown = median time of the pool's shutdown (not in the "
        f"timings). Whole run: {elapsed:.0f} s."
    )

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{began.strftime('%Y%m%dT%H%M%SZ')}.json"
    payload = {
        "started": began.isoformat(),
        "elapsed_seconds": elapsed,
        "machine": info,
        "config": {
            "n": args.n,
            "reps": args.reps,
            "method": args.method,
            "workers": args.workers,
            "entries": args.entries,
            "workloads": args.workload_list,
        },
        "versions": found_versions,
        "start_methods": methods,
        "skipped": skipped,
        "summary": rows,
        "runs": runs,
        "priming_runs_discarded": priming,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nRaw results: {path.relative_to(ROOT)}", file=sys.stderr)
    errors = sum(1 for r in runs if r.get("status") == "error")
    return 1 if errors and errors == len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
