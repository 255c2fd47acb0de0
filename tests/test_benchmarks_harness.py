"""Smoke tests of the benchmark harness (benchmarks/): it runs and reports, whatever the timings.

Nothing here asserts a timing: one measurement per executor and workload,
with tiny sizes, must print a well-formed JSON line with status ok; and the
report and summary functions must turn a synthetic run list into the right
rows, ratios, targets and Markdown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("psutil")


def run_one(executor: str, workload: str, *extra: str) -> dict[str, Any]:
    """``python -m benchmarks._one`` in a fresh interpreter; its one JSON line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "benchmarks._one", "--executor", executor,
           "--workload", workload, "--n", "50", "--workers", "2", "--method", "forkserver",
           "--payload-n", "2", "--cpu-n", "2", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    return dict(json.loads(lines[0]))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("executor", "workload"),
    [
        ("safepool", "submit"),
        ("stdlib", "submit"),
        ("safepool", "map100"),
        ("stdlib", "map100"),
        ("safepool", "payload"),
        ("stdlib", "cold-forkserver"),
    ],
)
def test_one_measurement_prints_a_well_formed_ok_line(executor: str, workload: str) -> None:
    pytest.importorskip("safepool" if executor == "safepool" else "concurrent.futures")
    record = run_one(executor, workload)
    assert record["status"] == "ok", record
    assert record["executor"] == executor
    assert record["workload"] == workload
    assert isinstance(record["value"], float) and record["value"] > 0
    assert isinstance(record["metrics"], dict)
    assert record["start_method"] == "forkserver"
    assert record["shutdown_seconds"] >= 0
    assert isinstance(record["version"], str) and record["version"]
    expected_n = {"submit": 50, "map100": 50, "payload": 2, "cold-forkserver": 1}
    assert record["n"] == expected_n[workload]
    if workload in ("submit", "map100"):
        assert record["metrics"]["tasks_per_s"] > 0


@pytest.mark.timeout(60)
def test_a_missing_feature_is_reported_as_not_applicable() -> None:
    record = run_one("stdlib", "timeout")
    assert record["status"] == "n/a"
    assert "timeout" in record["error"]


def _run(label: str, kind: str, workload: str, rep: int, value: float, **metrics: float) -> dict:
    return {"label": label, "executor": kind, "workload": workload, "rep": rep,
            "status": "ok", "value": value, "n": 100, "metrics": metrics,
            "start_method": "forkserver", "shutdown_seconds": 0.001, "version": "1.0"}  # fmt: skip


def _synthetic_runs() -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for rep in range(3):
        runs += [
            _run("safepool", "safepool", "submit", rep, 0.10 + 0.01 * rep, tasks_per_s=1000.0),
            _run("stdlib", "stdlib", "submit", rep, 0.60 - 0.01 * rep, tasks_per_s=170.0),
            _run("stdlib (A/A)", "stdlib", "submit", rep, 0.62, tasks_per_s=160.0),
            _run("safepool", "safepool", "timeout", rep, 0.004, next_task_s=0.030),
            _run("safepool", "safepool", "hooks", rep, 0.100),
            _run("safepool+hooks", "safepool-hooks", "hooks", rep, 0.103),
        ]
    runs.append({"label": "stdlib", "executor": "stdlib", "workload": "timeout", "rep": 0,
                 "status": "error", "error": "boom"})  # fmt: skip
    return runs


def test_summary_rows_ratios_and_targets_from_a_synthetic_run() -> None:
    from benchmarks._report import find, summarise, targets

    labels = ["safepool", "safepool+hooks", "stdlib", "stdlib (A/A)", "loky"]
    workloads = ["submit", "timeout", "hooks"]
    na = {("loky", "timeout"): "no per-task timeout", ("loky", "hooks"): "safepool only"}
    rows = summarise(_synthetic_runs(), labels, workloads, na, {"loky": "not installed"})

    safepool = find(rows, "submit", "safepool")
    assert safepool is not None
    assert safepool["median"] == pytest.approx(0.11)
    assert (safepool["min"], safepool["max"]) == (pytest.approx(0.10), pytest.approx(0.12))
    assert safepool["ratio"] == pytest.approx(0.11 / 0.59)
    assert safepool["metrics"]["tasks_per_s"] == 1000.0
    # "safepool+hooks" only takes part in hooks; loky, not installed, is shown as skipped.
    assert {r["label"] for r in rows if r["workload"] == "submit"} == {
        "safepool", "stdlib", "stdlib (A/A)", "loky"
    }  # fmt: skip
    loky = next(r for r in rows if r["label"] == "loky" and r["workload"] == "timeout")
    assert loky["status"] == "skipped"
    stdlib_timeout = next(r for r in rows if r["label"] == "stdlib" and r["workload"] == "timeout")
    assert stdlib_timeout["status"] == "failed" and stdlib_timeout["reason"] == "boom"
    hooked = find(rows, "hooks", "safepool+hooks")
    assert hooked is not None and hooked["ratio"] == pytest.approx(1.03)  # against safepool

    by_target = {t["target"]: t for t in targets(rows, "forkserver")}
    submit = by_target["tiny `submit` throughput ≥ 5x the stdlib"]
    assert submit["measured"].startswith("5.36x") and submit["meets"] == "yes"
    assert by_target["timeout reported ≤ 20 ms after it expires"]["meets"] == "yes"
    assert by_target["replacement worker takes the next task within 50 ms"]["meets"] == "yes"
    hooks = by_target["resource hooks cost < 5% on the tiny workload"]
    assert hooks["measured"].startswith("+3.0%") and hooks["meets"] == "yes"
    assert by_target["`map`, chunksize 100 ≥ multiprocessing.Pool"]["measured"] == "not measured"


def _payload(labels: list[str], workloads: list[str]) -> dict[str, Any]:
    from benchmarks._report import summarise

    na = {("stdlib (A/A)", "hooks"): "no"}
    machine = {"cpus": 2, "platform": "Linux", "implementation": "CPython", "python": "3.11.7",
               "safepool_commit": "abc1234", "load_average_before": (0.5, 0.4, 0.3),
               "load_average_after": (0.6, 0.5, 0.4)}  # fmt: skip
    config = {"n": 100, "reps": 3, "method": "forkserver", "workers": 2, "recycle_n": 200,
              "payload_n": 100, "cpu_n": 40, "timeout_rounds": 5, "quick": False,
              "quick_left_out": "", "entries": labels, "workloads": workloads}  # fmt: skip
    return {
        "started": "2026-01-01T00:00:00+00:00",
        "elapsed_seconds": 12.0,
        "machine": machine,
        "config": config,
        "versions": {"safepool": "0.1", "stdlib": "Python 3.11.7"},
        "start_methods": {"safepool": "forkserver", "stdlib": "forkserver"},
        "skipped": {},
        "summary": summarise(_synthetic_runs(), labels, workloads, na, {}),
    }


def test_markdown_report_from_a_synthetic_run() -> None:
    from benchmarks._report import markdown

    report = markdown(_payload(["safepool", "safepool+hooks", "stdlib", "stdlib (A/A)"],
                               ["submit", "timeout", "hooks"]))  # fmt: skip
    assert "## safepool against its targets" in report
    assert "| safepool | 110.0 ms | 100.0 ms | 120.0 ms | 0.19 |" in report
    assert "A/A control" in report and "submit +5%" in report
    assert "Load average (1/5/15 min) 0.50/0.40/0.30 before the run" in report
    assert "| stdlib | failed: boom |" in report
    assert "| stdlib (A/A) | n/a: no |" in report


@pytest.mark.timeout(60)
def test_charts_from_a_synthetic_run(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_payload(["safepool", "stdlib"], ["submit", "timeout"])))
    # In a child: matplotlib keeps its font files open, which this suite counts as a leak.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "benchmarks._chart", str(results)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)
    if importlib.util.find_spec("matplotlib") is None:  # `pip install -e '.[bench]'` has it
        assert proc.returncode != 0 and "No module named 'matplotlib'" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    charts = [tmp_path / "charts" / name for name in ("submit.png", "timeout.png")]
    assert proc.stdout.split() == [str(c) for c in charts]
    assert all(c.stat().st_size > 1000 for c in charts)
