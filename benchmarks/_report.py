"""From the raw runs to numbers and Markdown: per-workload tables, the A/A note, safepool's targets.

Nothing here passes or fails: the targets are printed next to what was
measured, and the exit code never depends on them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from benchmarks._entries import AA_CONTROL, BASELINE, BY_LABEL, ENTRIES
from benchmarks._executors import ADAPTERS
from benchmarks._workloads import CPU_TASK_SECONDS, TASK_TIMEOUT, WORKLOADS

Row = dict[str, Any]

# ------------------------------------------------------------------ numbers


def _median_metrics(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in runs for k, v in r.get("metrics", {}).items() if _is_number(v)}
    return {
        k: statistics.median(r["metrics"][k] for r in runs if _is_number(r["metrics"].get(k)))
        for k in sorted(keys)
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _helpers(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Helper process name -> median (over the runs) of its summed USS."""
    per_run: list[dict[str, float]] = []
    for r in runs:
        sums: dict[str, float] = {}
        for helper in r.get("metrics", {}).get("helpers", []):
            sums[helper["name"]] = sums.get(helper["name"], 0) + helper["uss"]
        per_run.append(sums)
    names = sorted({name for sums in per_run for name in sums})
    return {name: statistics.median(s.get(name, 0) for s in per_run) for name in names}


def summarise(
    runs: Sequence[dict[str, Any]],
    labels: Sequence[str],
    workloads: Sequence[str],
    na: dict[tuple[str, str], str],
    skipped: dict[str, str],
) -> list[Row]:
    """One row per (workload, label) that belongs in that workload's table.

    ``status`` is ``ok`` (median, min, max, ratio to the workload's baseline,
    medians of the metrics), ``failed`` (every run errored), ``n/a`` or
    ``skipped``, with ``reason``.
    """
    rows: list[Row] = []
    for workload in workloads:
        mine: list[Row] = []
        for label in labels:
            entry = BY_LABEL[label]
            if entry.only is not None and workload not in entry.only:
                continue
            row: Row = {"workload": workload, "label": label, "kind": entry.kind}
            if label in skipped:
                row.update(status="skipped", reason=skipped[label])
            elif (label, workload) in na:
                row.update(status="n/a", reason=na[(label, workload)])
            else:
                these = [r for r in runs if r.get("label") == label and r["workload"] == workload]
                ok = [r for r in these if r.get("status") == "ok"]
                errors = [r for r in these if r.get("status") != "ok"]
                row.update(count=len(ok), errors=len(errors))
                if errors:
                    row["error"] = errors[0].get("error", "?")
                if not ok:
                    row.update(status="failed", reason=row.get("error", "no runs"))
                else:
                    values = [r["value"] for r in ok]
                    row.update(
                        status="ok",
                        median=statistics.median(values),
                        min=min(values),
                        max=max(values),
                        n=ok[0].get("n"),
                        metrics=_median_metrics(ok),
                        start_method=ok[0].get("start_method"),
                        shutdown_median=statistics.median(
                            r.get("shutdown_seconds", 0.0) for r in ok
                        ),
                    )
                    if workload == "rss":
                        row["helpers"] = _helpers(ok)
            mine.append(row)
        baseline = WORKLOADS[workload].baseline
        base = next((r for r in mine if r["label"] == baseline and r["status"] == "ok"), None)
        for row in mine:
            if base is not None and row["status"] == "ok" and base["median"]:
                row["ratio"] = row["median"] / base["median"]
        rows.extend(mine)
    return rows


def find(rows: Iterable[Row], workload: str, label: str) -> Row | None:
    """The ok row of ``label`` in ``workload``, if there is one."""
    for row in rows:
        if row["workload"] == workload and row["label"] == label and row["status"] == "ok":
            return row
    return None


# --------------------------------------------------------------- formatting


def fmt_seconds(seconds: float) -> str:
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    ms = seconds * 1e3
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    return f"{ms:.1f} ms" if abs(ms) >= 10 else f"{ms:.2f} ms"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def fmt_value(workload: str, value: float) -> str:
    return fmt_bytes(value) if WORKLOADS[workload].unit == "bytes" else fmt_seconds(value)


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _metric(key: str, fmt: Callable[[float], str]) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.get("metrics", {}).get(key)
        return fmt(value) if value is not None else "—"

    return cell


def _per_task(row: Row) -> str:
    return fmt_seconds(row["median"] / row["n"]) if row.get("n") else "—"


def _helpers_cell(row: Row) -> str:
    helpers = row.get("helpers", {})
    return ", ".join(f"{name} {fmt_bytes(uss)}" for name, uss in helpers.items()) or "none"


_TINY_EXTRAS: list[tuple[str, Callable[[Row], str]]] = [
    ("per task", _per_task),
    ("tasks/s", _metric("tasks_per_s", _rate)),
]
#: Workload -> its extra columns (header, cell).
EXTRAS: dict[str, list[tuple[str, Callable[[Row], str]]]] = {
    "submit": _TINY_EXTRAS,
    "map1": _TINY_EXTRAS,
    "map100": _TINY_EXTRAS,
    "hooks": _TINY_EXTRAS,
    "recycle": [
        ("tasks", _metric("tasks", lambda v: f"{v:.0f}")),
        ("total", _metric("total_s", fmt_seconds)),
        ("tasks/s", _metric("tasks_per_s", _rate)),
    ],
    "payload": [
        ("MiB/s (in + out)", _metric("mib_per_s", _rate)),
        ("parent peak RSS", _metric("peak_rss", fmt_bytes)),
    ],
    "cpu": [
        ("efficiency", _metric("efficiency", lambda v: f"{100 * v:.0f}%")),
        ("CPU per task", _metric("task_cpu_s", fmt_seconds)),
    ],
    "timeout": [
        ("next task (median)", _metric("next_task_s", fmt_seconds)),
        ("late by (worst)", _metric("late_max_s", fmt_seconds)),
        ("next task (worst)", _metric("next_task_max_s", fmt_seconds)),
    ],
    "rss": [
        ("parent RSS", _metric("parent_rss", fmt_bytes)),
        ("workers RSS (sum)", _metric("workers_rss", fmt_bytes)),
        ("workers USS (sum)", _metric("workers_uss", fmt_bytes)),
        ("helpers (USS)", _helpers_cell),
    ],
}
#: What ``median``/``min``/``max`` are, per workload (default: the timed region's seconds).
VALUE_NAMES = {
    "recycle": "time per task",
    "timeout": "late by",
    "rss": "total USS",
}


def _reason(row: Row) -> str:
    return str(row.get("reason", "")).replace("|", "/").replace("\n", " ")[:200]


def workload_table(rows: Sequence[Row], workload: str) -> str:
    """The Markdown table of one workload.

    Entries that did not run it (n/a, skipped, failed) come last, one line per
    reason, so the table never leaves an executor out silently.
    """
    spec = WORKLOADS[workload]
    extras = EXTRAS.get(workload, [])
    name = VALUE_NAMES.get(workload, "time")
    header = ["executor", f"{name} (median)", "min", "max"]
    if spec.baseline:
        header.append(f"vs {spec.baseline}")
    header += [h for h, _ in extras] + ["shutdown"]
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    mine = [r for r in rows if r["workload"] == workload]
    for row in (r for r in mine if r["status"] == "ok"):
        failed = f" ({row['errors']} of {row['errors'] + row['count']} failed)"
        cells = [
            row["label"] + (failed if row["errors"] else ""),
            fmt_value(workload, row["median"]),
            fmt_value(workload, row["min"]),
            fmt_value(workload, row["max"]),
        ]
        if spec.baseline:
            cells.append(f"{row['ratio']:.2f}" if "ratio" in row else "—")
        cells += [cell(row) for _, cell in extras] + [fmt_seconds(row["shutdown_median"])]
        out.append("| " + " | ".join(cells) + " |")
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in (r for r in mine if r["status"] != "ok"):
        grouped.setdefault((row["status"], _reason(row)), []).append(row["label"])
    blanks = " |" * (len(header) - 2)
    for (status, reason), labels in grouped.items():
        out.append(f"| {', '.join(labels)} | {status}: {reason} |{blanks}")
    return "\n".join(out)


def workload_notes(rows: Sequence[Row], workload: str) -> list[str]:
    """The adapters' notes for this workload, for the entries in its table."""
    notes: list[str] = []
    kinds = dict.fromkeys(r["kind"] for r in rows if r["workload"] == workload)
    for kind in kinds:
        note = ADAPTERS[kind].notes.get(workload)
        if note and note not in notes:
            notes.append(note)
    labels = [r["label"] for r in rows if r["workload"] == workload]
    for label in labels:
        entry = BY_LABEL[label]
        if entry.only is None or not entry.about:
            continue
        note = f"{label}: {entry.about}."
        if entry.kind == "ceiling":
            note += (
                " A pool that keeps several calls queued per worker (or, in map100, sends "
                "chunks) can beat it."
            )
        notes.append(note)
    return notes


def aa_note(rows: Sequence[Row]) -> str | None:
    parts = [
        f"{row['workload']} {100 * (row['ratio'] - 1):+.0f}%"
        for row in rows
        if row["label"] == AA_CONTROL and "ratio" in row
    ]
    if not parts:
        return None
    return (
        "A/A control (the stdlib against itself, same code, separate runs): "
        + ", ".join(parts)
        + ". Differences between executors that are not clearly larger than these are noise."
    )


# ------------------------------------------------------------------ targets


def _aa(rows: Sequence[Row], workload: str) -> str:
    row = find(rows, workload, AA_CONTROL)
    if row is None or "ratio" not in row:
        return "—"
    return f"{100 * (row['ratio'] - 1):+.0f}%"


def _speedup(
    rows: Sequence[Row], workload: str, against: str, target: float, text: str
) -> dict[str, str]:
    mine, theirs = find(rows, workload, "safepool"), find(rows, workload, against)
    if mine is None or theirs is None:
        return {"target": text, "measured": "not measured", "meets": "—", "aa": _aa(rows, workload)}
    speedup = theirs["median"] / mine["median"]
    return {
        "target": text,
        "measured": f"{speedup:.2f}x as fast ({fmt_seconds(mine['median'])} vs "
        f"{fmt_seconds(theirs['median'])})",
        "meets": "yes" if speedup >= target else "no",
        "aa": _aa(rows, workload),
    }


def targets(rows: Sequence[Row], method: str) -> list[dict[str, str]]:
    """safepool's targets next to what this run measured (no assertion)."""
    out = [
        _speedup(rows, "submit", BASELINE, 5.0, "tiny `submit` throughput ≥ 5x the stdlib"),
        _speedup(rows, "map100", "mp.Pool", 1.0, "`map`, chunksize 100 ≥ multiprocessing.Pool"),
    ]
    for cold in ("cold-spawn", "cold-forkserver"):
        m = cold.removeprefix("cold-")
        out.append(
            _speedup(rows, cold, BASELINE, 1.0, f"cold start ({m}) no slower than the stdlib")
        )
    recycle_text = "recycle-heavy ≥ 3x the stdlib with forkserver"
    if method != "forkserver":
        recycle_text += f" (this run: {method})"
    out.append(_speedup(rows, "recycle", BASELINE, 3.0, recycle_text))

    timeout = find(rows, "timeout", "safepool")
    late = timeout["median"] if timeout else None
    nxt = timeout["metrics"].get("next_task_s") if timeout else None
    for text, value, limit in (
        ("timeout reported ≤ 20 ms after it expires", late, 0.020),
        ("replacement worker takes the next task within 50 ms", nxt, 0.050),
    ):
        out.append(
            {
                "target": text,
                "measured": "not measured" if value is None else f"{fmt_seconds(value)} (median)",
                "meets": "—" if value is None else ("yes" if value <= limit else "no"),
                "aa": "—",
            }
        )

    plain, hooked = find(rows, "hooks", "safepool"), find(rows, "hooks", "safepool+hooks")
    if plain and hooked:
        overhead = hooked["median"] / plain["median"] - 1
        measured = (
            f"{100 * overhead:+.1f}% ({fmt_seconds(hooked['median'])} vs "
            f"{fmt_seconds(plain['median'])})"
        )
        meets = "yes" if overhead < 0.05 else "no"
    else:
        measured, meets = "not measured", "—"
    hooks_target = "resource hooks cost < 5% on the tiny workload"
    out.append({"target": hooks_target, "measured": measured, "meets": meets, "aa": "—"})
    return out


def targets_table(items: Sequence[dict[str, str]]) -> str:
    out = [
        "| target | measured (safepool) | meets it | A/A noise on that workload |",
        "|---|---|---|---:|",
    ]
    out += [f"| {t['target']} | {t['measured']} | {t['meets']} | {t['aa']} |" for t in items]
    return "\n".join(out)


# ------------------------------------------------------------------- report


def sizes_line(config: dict[str, Any]) -> str:
    """The sizes of the workloads this run had, the workers and the repetitions."""
    chosen = set(config["workloads"])
    tiny = [w for w in ("submit", "map1", "map100", "hooks", "rss") if w in chosen]
    parts = [f"N={config['n']:,} tiny tasks ({', '.join(tiny)})"] if tiny else []
    if "recycle" in chosen:
        parts.append(f"recycle {config['recycle_n']} tasks (fewer where the notes say)")
    if "payload" in chosen:
        parts.append(f"payload {config['payload_n']} x 1 MiB")
    if "cpu" in chosen:
        parts.append(f"cpu {config['cpu_n']} x ~{CPU_TASK_SECONDS * 1e3:.0f} ms")
    if "timeout" in chosen:
        parts.append(f"timeout {config['timeout_rounds']} round(s) of {TASK_TIMEOUT:g} s")
    workers = f"max_workers={config['workers']}" + (
        " (1 for timeout)" if "timeout" in chosen else ""
    )
    parts.append(workers)
    parts.append(f"{config['reps']} repetitions, each measurement in a fresh interpreter")
    return "; ".join(parts) + "."


def versions_line(versions: dict[str, str]) -> str:
    """The versions line; the executors that come with Python are named once, together."""
    label_of = {e.kind: e.label for e in reversed(ENTRIES)}
    order = [e.kind for e in ENTRIES]
    kinds = sorted(versions, key=lambda k: order.index(k) if k in order else len(order))
    in_python = [label_of.get(k, k) for k in kinds if versions[k].startswith("Python ")]
    others = [f"{label_of.get(k, k)} {versions[k]}" for k in kinds
              if not versions[k].startswith("Python ")]  # fmt: skip
    python = next((v for v in versions.values() if v.startswith("Python ")), None)
    if python:
        others.append(f"{python} ({', '.join(in_python)})")
    return "Versions: " + ", ".join(others)


def markdown(payload: dict[str, Any]) -> str:
    """The whole report, from the JSON payload the driver writes."""
    info, config, rows = payload["machine"], payload["config"], payload["summary"]
    before, after = info["load_average_before"], info["load_average_after"]
    methods = payload["start_methods"]
    differing = {k: v for k, v in methods.items() if v != config["method"]}
    method_line = (
        f"Start method: {config['method']} for every executor (cold-spawn and "
        "cold-forkserver use their own, whatever `--method` says)."
    )
    if differing:
        method_line += " Except: " + ", ".join(f"{k} {v}" for k, v in differing.items()) + "."
    lines = [
        f"# Process-pool benchmarks, {payload['started'][:16].replace('T', ' ')} UTC",
        "",
        f"Machine: {info['cpus']} CPUs, {info['platform']}; {info['implementation']} "
        f"{info['python']}. Load average (1/5/15 min) {before[0]:.2f}/{before[1]:.2f}/"
        f"{before[2]:.2f} before the run, {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} after.",
        "",
        method_line,
        "",
        versions_line(payload["versions"]) + f"; safepool at {info['safepool_commit']}.",
        "",
        "Executors: "
        + "; ".join(
            f"{e.label} = {e.about}" for e in ENTRIES if e.about and e.label in config["entries"]
        )
        + ". Each is driven through its own public API (see benchmarks/README.md).",
        "",
        "Sizes: " + sizes_line(config),
        "",
    ]
    if config.get("quick_left_out"):
        lines += [f"Quick mode (`--quick`) left out: {config['quick_left_out']}.", ""]
    note = aa_note(rows)
    if note:
        lines += [note, ""]
    for label, reason in payload["skipped"].items():
        lines += [f"Skipped {label}: {reason}.", ""]
    lines += [
        "## safepool against its targets",
        "",
        "Measured in this run, not asserted (nothing fails on a timing). A ratio is only "
        "meaningful when it is clearly larger than the A/A noise on the same workload.",
        "",
        targets_table(targets(rows, config["method"])),
        "",
    ]
    for workload in config["workloads"]:
        spec = WORKLOADS[workload]
        lines += [
            f"## {spec.title} (`{workload}`)",
            "",
            f"Times: {spec.times}.",
            "",
            workload_table(rows, workload),
            "",
        ]
        lines += [f"* {n}" for n in workload_notes(rows, workload)]
        if workload_notes(rows, workload):
            lines.append("")
    lines += [
        'How to read it: median, min and max over the repetitions; "vs X" = this median / '
        "X's median in the same run (below 1: faster, or less memory); shutdown = median time "
        "of the pool's shutdown, which is in no other number. "
        f"Whole run: {payload['elapsed_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
