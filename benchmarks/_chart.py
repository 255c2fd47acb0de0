"""One PNG per workload: bars of the medians with min-max whiskers, the ratio written on each.

matplotlib with the ``Agg`` backend (no display needed); imported only when
charts are written, so the rest of the harness runs without it.
``python -m benchmarks._chart results.json`` redraws the charts of a finished run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import VALUE_NAMES, Row, fmt_seconds, fmt_value
from benchmarks._workloads import WORKLOADS

#: Bar colours: safepool stands out, the raw ceiling is grey, the rest blue.
_COLOURS = {"safepool": "#d62728", "safepool-hooks": "#ff9896", "ceiling": "#7f7f7f"}


def _annotation(row: Row) -> str:
    """The derived number written after the ratio on a bar."""
    metrics = row.get("metrics", {})
    workload = row["workload"]
    if "tasks_per_s" in metrics:
        return f"{metrics['tasks_per_s']:,.0f} tasks/s"
    if workload == "payload":
        return f"{metrics['mib_per_s']:,.0f} MiB/s"
    if workload == "cpu":
        return f"efficiency {100 * metrics['efficiency']:.0f}%"
    if workload == "timeout":
        return f"next task {fmt_seconds(metrics['next_task_s'])}"
    return ""


def chart(rows: Sequence[Row], workload: str, subtitle: str, path: Path) -> Path:
    """Write the chart of ``workload`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = WORKLOADS[workload]
    mine = [r for r in rows if r["workload"] == workload]
    ok = [r for r in mine if r["status"] == "ok"]
    missing = [f"{r['label']} ({r['status']})" for r in mine if r["status"] != "ok"]
    scale, unit = (1 / 2**20, "MiB") if spec.unit == "bytes" else (1e3, "ms")
    value_name = VALUE_NAMES.get(workload, "time")

    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.48 * max(len(ok), 1)))
    labels = [r["label"] for r in ok]
    medians = [r["median"] * scale for r in ok]
    whiskers = [
        [(r["median"] - r["min"]) * scale for r in ok],
        [(r["max"] - r["median"]) * scale for r in ok],
    ]
    colours = [_COLOURS.get(r["kind"], "#1f77b4") for r in ok]
    y = list(range(len(ok)))
    ax.barh(y, medians, xerr=whiskers, color=colours, capsize=3, alpha=0.85)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    right = max((r["max"] * scale for r in ok), default=1.0)
    lowest = min((r["min"] * scale for r in ok), default=0.0)
    # A log axis when the medians span more than 30x (a slow outlier would flatten the rest).
    log = lowest > 0 and max(medians) / min(medians) > 30
    if log:
        ax.set_xscale("log")
        span = math.log10(right / (lowest / 2))
        ax.set_xlim(lowest / 2, right * 10 ** (0.45 * span))
    else:
        ax.set_xlim(min(0.0, lowest * 1.1), right * 1.45 if right > 0 else 1.0)
    for i, row in enumerate(ok):
        parts = [fmt_value(workload, row["median"])]
        if "ratio" in row:
            parts.append(f"{row['ratio']:.2f}x {spec.baseline}")
        extra = _annotation(row)
        if extra:
            parts.append(extra)
        at = row["max"] * scale * 1.15 if log else max(row["max"] * scale, 0) + right * 0.02
        ax.text(at, i, "  ·  ".join(parts), va="center", fontsize=8)
    scale_note = ", log scale" if log else ""
    ax.set_xlabel(f"{value_name} ({unit}{scale_note}), median with min-max whiskers")
    ax.set_title(f"{spec.title} ({workload})\n{subtitle}", fontsize=10)
    if missing:
        fig.text(0.01, 0.005, "not shown: " + ", ".join(missing), fontsize=7, color="#555555")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.03 if missing else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_charts(payload: dict[str, Any], directory: Path) -> list[Path]:
    """One ``<workload>.png`` per workload in ``directory``."""
    info = payload["machine"]
    subtitle = (
        f"{info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
        f"{payload['started'][:16].replace('T', ' ')} UTC, "
        f"{payload['config']['reps']} reps, start method {payload['config']['method']}"
    )
    return [
        chart(payload["summary"], workload, subtitle, directory / f"{workload}.png")
        for workload in payload["config"]["workloads"]
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks._chart RESULTS_JSON [DIR]``: redraw the charts of a finished run."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks._chart")
    parser.add_argument("results", type=Path, help="a results.json written by a run")
    parser.add_argument("dir", type=Path, nargs="?", help="default: charts/ next to it")
    args = parser.parse_args(argv)
    payload = json.loads(args.results.read_text())
    for path in write_charts(payload, args.dir or args.results.parent / "charts"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
