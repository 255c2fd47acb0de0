"""Scheduling: every measurement in a fresh interpreter, executors in rotating order.

Per repetition and workload, the entries that take part run one after the
other, in an order that rotates by one place each repetition, so none is
always first or last. Each measurement is ``python -m benchmarks._one ...`` in
its own session, bounded by ``--timeout``: on expiry its whole process group
(the interpreter, a forkserver, workers) is killed and the run is recorded as
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._entries import BY_LABEL, Entry, takes_part
from benchmarks._executors import ADAPTERS
from benchmarks._workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent


def static_na(entry: Entry, workload: str) -> str | None:
    """Why ``entry`` cannot run ``workload``, known without running it; else None."""
    return ADAPTERS[entry.kind].na.get(workload)


def run_one(kind: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its JSON line, or an error record."""
    cmd = [
        sys.executable, "-m", "benchmarks._one",
        "--executor", kind, "--workload", workload, "--n", str(args.n),
        "--method", args.method, "--workers", str(args.workers),
        "--recycle-n", str(args.recycle_n), "--payload-n", str(args.payload_n),
        "--cpu-n", str(args.cpu_n), "--timeout-rounds", str(args.timeout_rounds),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # Let the first (priming) runs write bytecode: a checkout under test would
    # otherwise be compiled from source in every worker, which an installed
    # package never is.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
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
                    "error": f"no result within --timeout {args.timeout:g} s",
                    "wall_seconds": time.monotonic() - started}  # fmt: skip
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


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _shown(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return f"{record.get('status')}: {record.get('error', '?')}"[:120]
    if WORKLOADS[record["workload"]].unit == "bytes":
        return f"{record['value'] / 2**20:.1f} MiB"
    return f"{record['value'] * 1e3:.1f} ms"


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every (repetition, workload, entry) measurement, in rotating entry order.

    Returns ``runs`` (the measurements), ``priming`` (discarded), ``skipped``
    (label -> why: not installed) and ``na`` ((label, workload) -> why).
    """
    entries = [BY_LABEL[label] for label in args.entries]
    skipped: dict[str, str] = {}
    for entry in entries:
        module = ADAPTERS[entry.kind].module
        if importlib.util.find_spec(module.split(".")[0]) is None:
            skipped[entry.label] = f"{module.split('.')[0]} is not installed"

    # One discarded cold start per executor package first, so none pays for a cold disk cache.
    priming: list[dict[str, Any]] = []
    primed: set[str] = set()
    for entry in entries:
        module = ADAPTERS[entry.kind].module
        if entry.label in skipped or entry.kind == "ceiling" or module in primed:
            continue
        primed.add(module)
        _progress(f"priming {entry.kind} ...")
        record = run_one(entry.kind, f"cold-{args.method}", args)
        priming.append(record)
        if record.get("status") == "skipped":
            for other in entries:
                if ADAPTERS[other.kind].module == module:
                    skipped[other.label] = record.get("error", "skipped")

    na: dict[tuple[str, str], str] = {}
    for workload in args.workload_list:
        for entry in entries:
            reason = static_na(entry, workload)
            if reason and entry.label not in skipped and takes_part(entry, workload):
                na[(entry.label, workload)] = reason

    def active(workload: str) -> list[Entry]:
        return [
            e
            for e in entries
            if e.label not in skipped and takes_part(e, workload) and (e.label, workload) not in na
        ]

    total = args.reps * sum(len(active(w)) for w in args.workload_list)
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for workload in args.workload_list:
            todo = active(workload)
            shift = rep % len(todo) if todo else 0
            for position, entry in enumerate(todo[shift:] + todo[:shift]):
                record = run_one(entry.kind, workload, args)
                record.update(label=entry.label, rep=rep, position=position)
                runs.append(record)
                if record.get("status") == "n/a":  # found out by running: no more reps
                    na[(entry.label, workload)] = record.get("error", "n/a")
                _progress(
                    f"[{len(runs)}/{total}] rep {rep + 1} {workload:<15} {entry.label:<15} "
                    f"{_shown(record)}"
                )
    return {"runs": runs, "priming": priming, "skipped": skipped, "na": na}
