"""``python -m benchmarks.cluster``: safepool on a Dask cluster against plain Dask, one run.

    python -m benchmarks.cluster                 # 10 repetitions, about 70 s on 2 cores
    python -m benchmarks.cluster --quick         # 3 repetitions, about 25 s
    python -m benchmarks.cluster --reps 5 --out /tmp/cluster --chart-in-out

One ``distributed.LocalCluster`` (2 worker processes with 1 thread each, on
127.0.0.1 only, no dashboard) is started in this run, and one synchronous
``Client`` to it. On it, the same client drives three contenders:

* ``safepool``: ``safepool.Executor(cluster=client)``, created once per run
  (each Dask worker runs a node-local safepool pool: its thread count, 1, of
  processes);
* ``dask``: plain Dask, ``client.submit(fn, x, pure=False)``;
* ``dask (A/A)``: plain Dask again, the same code as a second contender: the
  difference between the two is the noise of the moment (the A/A control).

Workloads (what the clock covers):

* ``tiny200``: 200 ``noop(i)`` submitted at once, then every result gathered
  (safepool: ``ex.submit`` x 200, then ``.result()`` of each; Dask:
  ``client.submit`` x 200, then one ``client.gather``).
* ``roundtrip``: submit one ``noop``, wait for its result, 50 times in a row;
  the value of a repetition is the median time of one call. A ``Client``
  sends its messages to the scheduler in batches at most every 10 ms
  (``BatchedSend(interval="10ms")`` in ``distributed.client``), so back to
  back round trips of anything quicker than that all take about 10 ms: this
  one shows what a loop of calls gets, not the latency of one call.
* ``roundtrip-idle``: the same, 30 calls, with 15 ms of sleep (not timed)
  before each, so every ``submit`` finds the client's batch interval over and
  leaves at once: the latency of one call.
* ``timeout``: safepool only: ``ex.options(timeout=0.5).submit(sleep_for, 5.0)``;
  from just before ``submit`` to the ``TaskTimeoutError`` raised by
  ``result()``, minus the 0.5 s: how late the timeout reaches the client. Then
  one ``noop`` through safepool (the node's replacement process taking the next
  call). Plain Dask has no per-task timeout; its no-op round trip (from
  ``roundtrip-idle``) is shown next to it as context. The clock starts at
  ``submit``, so the lateness includes getting the call to a node and waiting
  there for a free process (a replacement still starting after the previous
  round's kill, say), not only the kill and the way back.

Every repetition runs each workload once per contender, in an order that
rotates by one place each repetition, so that drift on the machine hits all of
them. Before the clock starts, each contender is warmed up (a few bursts and
single calls; for safepool also one discarded timeout). Results are checked
after the clock stops (the 200 results in order, each ``noop``'s value, a
``TaskTimeoutError`` and nothing else), so a wrong result cannot post a number.
Measurement only: targets are printed next to what was measured, and the exit
code never depends on a timing.

Output: a plain-text table on stdout (progress on stderr), ``DIR/cluster.json``
(every raw sample, the summary, the machine) with ``--out DIR`` (default
``benchmarks/results/cluster-<UTC timestamp>/``), and the chart
``docs/performance/charts/cluster.png`` (``DIR/cluster.png`` with
``--chart-in-out``).

This module is the main module of the run, so every Dask worker process
(started with ``spawn``) imports it again: it imports only the standard
library and ``benchmarks.tasks`` at its top level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from elsewhere: the workers must import benchmarks too
    sys.path.insert(0, str(ROOT))

from benchmarks.tasks import noop, sleep_for  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CHART = ROOT / "docs" / "performance" / "charts" / "cluster.png"

SAFEPOOL, DASK, AA = "safepool", "dask", "dask (A/A)"
CONTENDERS = (SAFEPOOL, DASK, AA)
WORKLOADS = ("tiny200", "roundtrip", "roundtrip-idle", "timeout")

TINY_N = 200  #: tasks in ``tiny200``
CALLS = 50  #: calls in one repetition of ``roundtrip``
IDLE_CALLS = 30  #: calls in one repetition of ``roundtrip-idle``
IDLE_GAP = 0.015  #: sleep before each of them: longer than the Client's 10 ms batch interval
TASK_TIMEOUT = 0.5  #: the per-call timeout in ``timeout``
SLEEP = 5.0  #: how long the ``timeout`` task would sleep without it

#: The targets (measured against, never asserted).
TINY_RATIO_TARGET = 1.3  #: safepool / plain Dask on ``tiny200``
ROUNDTRIP_TARGET_S = 1e-3  #: safepool - plain Dask per round trip
LATE_TARGET_S = 0.100  #: timeout lateness (median)

DEFAULT_REPS, QUICK_REPS = 10, 3

Sample = dict[str, Any]


# ----------------------------------------------------------------- contenders


class Contender:
    """One way of running calls on the cluster: a burst and a single round trip."""

    def __init__(
        self, label: str, submit: Callable[..., Any], gather: Callable[[list[Any]], list[Any]]
    ) -> None:
        self.label = label
        self._submit = submit
        self._gather = gather

    def burst(self, n: int) -> tuple[float, list[Any]]:
        """Submit ``noop(i)`` for i < n at once, then wait for all; (seconds, results)."""
        t0 = time.perf_counter()
        futures = [self._submit(noop, i) for i in range(n)]
        results = self._gather(futures)
        elapsed = time.perf_counter() - t0
        del futures
        return elapsed, results

    def roundtrips(self, calls: int, gap: float = 0.0) -> tuple[list[float], list[Any]]:
        """``calls`` times: (sleep ``gap``,) submit one ``noop``, wait for its result; the
        time of each (the sleep not included)."""
        times, results = [], []
        for i in range(calls):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            value = self._submit(noop, i).result()
            times.append(time.perf_counter() - t0)
            results.append(value)
        return times, results


def contenders(client: Any, executor: Any) -> dict[str, Contender]:
    def dask_submit(fn: Callable[..., Any], x: Any) -> Any:
        return client.submit(fn, x, pure=False)

    def safepool_gather(futures: list[Any]) -> list[Any]:
        return [f.result() for f in futures]

    return {
        SAFEPOOL: Contender(SAFEPOOL, executor.submit, safepool_gather),
        DASK: Contender(DASK, dask_submit, client.gather),
        AA: Contender(AA, dask_submit, client.gather),
    }


def one_timeout(executor: Any) -> Sample:
    """One ``timeout`` round: how late the TaskTimeoutError arrives; then the next call."""
    from safepool import TaskTimeoutError

    timed = executor.options(timeout=TASK_TIMEOUT)
    t0 = time.perf_counter()
    future = timed.submit(sleep_for, SLEEP)
    try:
        value = future.result(timeout=SLEEP + 30)
    except TaskTimeoutError:
        late = time.perf_counter() - t0 - TASK_TIMEOUT
    else:
        raise AssertionError(f"timeout: the task returned {value!r} instead of timing out")
    t1 = time.perf_counter()
    after = executor.submit(noop, 7).result()
    next_task = time.perf_counter() - t1
    if after != 7:
        raise AssertionError(f"timeout: the noop after it returned {after!r}")
    return {"late_s": late, "next_task_s": next_task}


def warm_up(runners: dict[str, Contender], executor: Any) -> dict[str, Any]:
    """A few bursts and single calls per contender, and one discarded timeout; their times."""
    warm: dict[str, Any] = {}
    for label, runner in runners.items():
        bursts = [runner.burst(20)[0] for _ in range(3)]
        singles, _ = runner.roundtrips(5)
        warm[label] = {"bursts_s": bursts, "roundtrips_s": singles}
    warm["timeout"] = one_timeout(executor)
    return warm


# ----------------------------------------------------------------- measuring


def _rotated(reps_done: int) -> list[str]:
    k = reps_done % len(CONTENDERS)
    return list(CONTENDERS[k:] + CONTENDERS[:k])


def measure(runners: dict[str, Contender], executor: Any, reps: int) -> dict[str, Any]:
    """Every workload ``reps`` times, the contenders in rotating order within a repetition."""
    raw: dict[str, Any] = {
        "tiny200": {label: [] for label in CONTENDERS},
        "roundtrip": {label: [] for label in CONTENDERS},  # per-rep medians
        "roundtrip_calls": {label: [] for label in CONTENDERS},  # every call
        "roundtrip-idle": {label: [] for label in CONTENDERS},
        "roundtrip-idle_calls": {label: [] for label in CONTENDERS},
        "timeout": [],
        "order": [],
    }
    expected = list(range(TINY_N))
    for rep in range(reps):
        order = _rotated(rep)
        raw["order"].append(order)
        for label in order:
            elapsed, results = runners[label].burst(TINY_N)
            if results != expected:
                raise AssertionError(f"tiny200: {label} returned wrong results")
            raw["tiny200"][label].append(elapsed)
        for workload, calls, gap in (
            ("roundtrip", CALLS, 0.0),
            ("roundtrip-idle", IDLE_CALLS, IDLE_GAP),
        ):
            for label in order:
                times, results = runners[label].roundtrips(calls, gap)
                if results != list(range(calls)):
                    raise AssertionError(f"{workload}: {label} returned wrong results")
                raw[workload][label].append(statistics.median(times))
                raw[f"{workload}_calls"][label].append(times)
        raw["timeout"].append(one_timeout(executor))
        _progress(
            f"rep {rep + 1}/{reps}: tiny200 "
            + ", ".join(f"{lb} {_ms(raw['tiny200'][lb][-1])}" for lb in CONTENDERS)
            + "; roundtrip "
            + ", ".join(f"{lb} {_ms(raw['roundtrip'][lb][-1])}" for lb in CONTENDERS)
            + "; idle "
            + ", ".join(f"{lb} {_ms(raw['roundtrip-idle'][lb][-1])}" for lb in CONTENDERS)
            + f"; timeout late {_ms(raw['timeout'][-1]['late_s'])}"
        )
    return raw


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians, min and max per workload and contender; the ratios, differences and targets."""
    tiny = {label: _stats(raw["tiny200"][label]) for label in CONTENDERS}
    late = _stats([s["late_s"] for s in raw["timeout"]])
    next_task = _stats([s["next_task_s"] for s in raw["timeout"]])
    ratio = tiny[SAFEPOOL]["median"] / tiny[DASK]["median"]
    aa_ratio = tiny[AA]["median"] / tiny[DASK]["median"]

    def roundtrip(workload: str) -> dict[str, Any]:
        trip = {label: _stats(raw[workload][label]) for label in CONTENDERS}
        diff = trip[SAFEPOOL]["median"] - trip[DASK]["median"]
        return {
            "contenders": trip,
            "difference_s": diff,
            "aa_difference_s": trip[AA]["median"] - trip[DASK]["median"],
            "target": f"<= {ROUNDTRIP_TARGET_S * 1e3:g} ms slower than plain Dask",
            "met": diff <= ROUNDTRIP_TARGET_S,
        }

    idle = roundtrip("roundtrip-idle")
    return {
        "tiny200": {
            "contenders": tiny,
            "ratio": ratio,
            "aa_ratio": aa_ratio,
            "target": f"<= {TINY_RATIO_TARGET}x plain Dask",
            "met": ratio <= TINY_RATIO_TARGET,
        },
        "roundtrip": roundtrip("roundtrip"),
        "roundtrip-idle": idle,
        "timeout": {
            "late": late,
            "next_task": next_task,
            "plain_roundtrip_s": idle["contenders"][DASK]["median"],
            "target": f"<= {LATE_TARGET_S * 1e3:g} ms late (median)",
            "met": late["median"] <= LATE_TARGET_S,
            "max_met": late["max"] <= LATE_TARGET_S,
        },
    }


# ----------------------------------------------------------------- reporting


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    if abs(ms) >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms" if abs(ms) >= 10 else f"{ms:.2f} ms"


def _signed_ms(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + _ms(abs(seconds))


def _spread(s: dict[str, float]) -> str:
    return f"{_ms(s['median'])} ({_ms(s['min'])}-{_ms(s['max'])})"


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The report's rows: workload, safepool, plain Dask, ratio or difference, A/A, target, met."""
    tiny, tmo = summary["tiny200"], summary["timeout"]
    yes = {True: "yes", False: "no"}
    max_note = "" if tmo["max_met"] else f" (max {_ms(tmo['late']['max'])}: no)"

    def trip_row(workload: str, name: str) -> list[str]:
        trip = summary[workload]
        return [
            name,
            _ms(trip["contenders"][SAFEPOOL]["median"]),
            _ms(trip["contenders"][DASK]["median"]),
            _signed_ms(trip["difference_s"]),
            _signed_ms(trip["aa_difference_s"]),
            f"<= +{ROUNDTRIP_TARGET_S * 1e3:g} ms",
            yes[trip["met"]],
        ]

    return [
        [
            "workload",
            "safepool",
            "plain Dask",
            "safepool vs Dask",
            "A/A (Dask vs Dask)",
            "target",
            "met?",
        ],
        [
            f"tiny200 ({TINY_N} tasks, total)",
            _ms(tiny["contenders"][SAFEPOOL]["median"]),
            _ms(tiny["contenders"][DASK]["median"]),
            f"{tiny['ratio']:.2f}x",
            f"{tiny['aa_ratio']:.2f}x",
            f"<= {TINY_RATIO_TARGET}x",
            yes[tiny["met"]],
        ],
        trip_row("roundtrip", "roundtrip (back to back, per call)"),
        trip_row("roundtrip-idle", "roundtrip-idle (per call)"),
        [
            f"timeout ({TASK_TIMEOUT:g} s, late by)",
            f"{_ms(tmo['late']['median'])} (max {_ms(tmo['late']['max'])})",
            f"no-op round trip (idle) {_ms(tmo['plain_roundtrip_s'])}",
            "—",
            "—",
            f"<= {LATE_TARGET_S * 1e3:g} ms",
            yes[tmo["met"]] + max_note,
        ],
    ]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 2) + "---|"]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def detail_table(summary: dict[str, Any]) -> str:
    """Median (min-max) over the repetitions, per contender."""
    rows = [["contender", "tiny200 total", "roundtrip per call", "roundtrip-idle per call"]]
    for label in CONTENDERS:
        rows.append(
            [label]
            + [
                _spread(summary[workload]["contenders"][label])
                for workload in ("tiny200", "roundtrip", "roundtrip-idle")
            ]
        )
    tmo = summary["timeout"]
    rows.append(
        [
            "safepool timeout",
            f"late by {_spread(tmo['late'])}",
            f"next call {_spread(tmo['next_task'])}",
            "",
        ]
    )
    return text_table(rows)


def chart(payload: dict[str, Any], path: Path) -> Path:
    """Four panels, one per workload: median bars, min-max whiskers, the target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = payload["summary"]
    colours = {SAFEPOOL: "#d62728", DASK: "#1f77b4", AA: "#aec7e8"}
    fig, grid = plt.subplots(2, 2, figsize=(13, 6.2))
    axes = list(grid.flat)

    def bars(
        ax: Any,
        labels: list[str],
        stats: list[dict[str, float]],
        colour: list[str],
        notes: list[str],
        target: float,
        target_text: str,
        title: str,
        xlabel: str,
    ) -> None:
        medians = [s["median"] * 1e3 for s in stats]
        whiskers = [
            [(s["median"] - s["min"]) * 1e3 for s in stats],
            [(s["max"] - s["median"]) * 1e3 for s in stats],
        ]
        y = list(range(len(labels)))
        ax.barh(y, medians, xerr=whiskers, color=colour, capsize=3, alpha=0.85)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        right = max(max(s["max"] for s in stats) * 1e3, target * 1e3)
        ax.set_xlim(0, right * 1.6)
        for i, (s, note) in enumerate(zip(stats, notes, strict=True)):
            ax.text(
                s["max"] * 1e3 + right * 0.03,
                i,
                note,
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
        ax.axvline(target * 1e3, color="#2ca02c", linestyle="--", linewidth=1)
        ax.text(
            target * 1e3,
            len(labels) - 0.45,
            " " + target_text,
            color="#2ca02c",
            fontsize=7,
            va="bottom",
        )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(axis="x", alpha=0.3)

    tiny = summary["tiny200"]
    tiny_stats = [tiny["contenders"][lb] for lb in CONTENDERS]
    base = tiny["contenders"][DASK]["median"]
    bars(
        axes[0],
        list(CONTENDERS),
        tiny_stats,
        [colours[lb] for lb in CONTENDERS],
        [f"{_ms(s['median'])}  {s['median'] / base:.2f}x" for s in tiny_stats],
        TINY_RATIO_TARGET * base,
        f"target {TINY_RATIO_TARGET}x Dask",
        f"{TINY_N} tiny tasks at once, all gathered (tiny200)",
        "total time (ms)",
    )

    for ax, workload, title in (
        (axes[1], "roundtrip", f"one call at a time, {CALLS} back to back (roundtrip)"),
        (
            axes[2],
            "roundtrip-idle",
            f"one call at a time, {IDLE_CALLS} calls, {IDLE_GAP * 1e3:g} ms idle before each "
            "(roundtrip-idle)",
        ),
    ):
        trip = summary[workload]
        trip_stats = [trip["contenders"][lb] for lb in CONTENDERS]
        base = trip["contenders"][DASK]["median"]
        bars(
            ax,
            list(CONTENDERS),
            trip_stats,
            [colours[lb] for lb in CONTENDERS],
            [f"{_ms(s['median'])}  {_signed_ms(s['median'] - base)}" for s in trip_stats],
            base + ROUNDTRIP_TARGET_S,
            f"target Dask +{ROUNDTRIP_TARGET_S * 1e3:g} ms",
            title,
            "time per call (ms), median of a repetition",
        )

    tmo = summary["timeout"]
    plain = summary["roundtrip-idle"]["contenders"][DASK]
    bars(
        axes[3],
        ["safepool:\nlate by", "safepool:\nnext call", "dask no-op\nround trip"],
        [tmo["late"], tmo["next_task"], plain],
        [colours[SAFEPOOL], "#ff9896", "#7f7f7f"],
        [
            _ms(tmo["late"]["median"]),
            _ms(tmo["next_task"]["median"]),
            _ms(plain["median"]) + " (idle)",
        ],
        LATE_TARGET_S,
        f"target {LATE_TARGET_S * 1e3:g} ms late",
        f"{TASK_TIMEOUT:g} s timeout on a {SLEEP:g} s task (timeout)",
        "ms",
    )

    info = payload["machine"]
    fig.suptitle(
        f"safepool on a Dask LocalCluster (2 workers x 1 thread) vs plain Dask: median, "
        f"min-max whiskers over {payload['config']['reps']} reps\n"
        f"{info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
        f"distributed {payload['versions']['distributed']}, "
        f"{payload['started'][:16].replace('T', ' ')} UTC",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description="safepool on a Dask LocalCluster against plain Dask, on one cluster "
        "started in this run. Measurement only: nothing passes or fails on a timing.",
    )
    parser.add_argument(
        "--reps",
        type=int,
        help=f"repetitions, at least 3 (default {DEFAULT_REPS}; {QUICK_REPS} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPS} repetitions")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for cluster.json (default: benchmarks/results/cluster-<UTC timestamp>/)",
    )
    parser.add_argument(
        "--chart-in-out",
        action="store_true",
        help="write the chart to DIR/cluster.png, not docs/performance/charts/cluster.png",
    )
    parser.add_argument(
        "--redraw",
        type=Path,
        metavar="JSON",
        help="measure nothing: redraw the chart of a finished run from its cluster.json "
        "(next to it with --chart-in-out)",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else DEFAULT_REPS
    if args.reps < 3:
        parser.error("--reps must be at least 3 (a median of fewer says little)")
    return args


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("safepool", "distributed", "dask", "cloudpickle", "tornado"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


def run(reps: int) -> dict[str, Any]:
    """Start the cluster, measure, shut everything down; the raw samples and timings."""
    from distributed import Client, LocalCluster

    import safepool

    # The scheduler's HTTP server (no dashboard) falls back to a free port when
    # 8787 is taken by another cluster on this machine, and warns about it.
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    # Spawned Dask workers inherit sys.path; their node pools' processes read PYTHONPATH too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        client = Client(cluster, set_as_default=False)
        try:
            timings["cluster_start_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            executor = safepool.Executor(cluster=client)
            timings["executor_create_s"] = time.perf_counter() - t1
            try:
                runners = contenders(client, executor)
                t2 = time.perf_counter()
                warm = warm_up(runners, executor)
                timings["warm_up_s"] = time.perf_counter() - t2
                _progress(
                    f"cluster up in {timings['cluster_start_s']:.1f} s, warmed up in "
                    f"{timings['warm_up_s']:.1f} s; measuring {reps} repetitions"
                )
                raw = measure(runners, executor, reps)
                cluster_info = {
                    "scheduler": cluster.scheduler_address,
                    "workers": {a: n for a, n in client.nthreads().items()},
                    "processes_per_worker": executor.max_workers,
                    "start_method": executor.start_method,
                }
            finally:
                t3 = time.perf_counter()
                executor.shutdown(wait=True)
                timings["executor_shutdown_s"] = time.perf_counter() - t3
        finally:
            client.close()
    finally:
        t4 = time.perf_counter()
        cluster.close()
        timings["cluster_close_s"] = time.perf_counter() - t4
    return {"raw": raw, "warm_up": warm, "timings": timings, "cluster": cluster_info}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redraw is not None:
        payload = json.loads(args.redraw.read_text())
        target = args.redraw.parent / "cluster.png" if args.chart_in_out else CHART
        print(chart(payload, target))
        return 0
    began = datetime.now(timezone.utc)
    out_dir: Path = args.out or RESULTS / began.strftime("cluster-%Y%m%dT%H%M%SZ")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    measured = run(args.reps)
    elapsed = time.monotonic() - t0
    from benchmarks.__main__ import machine_info

    info = machine_info()
    info["load_average_before"] = load_before
    info["load_average_after"] = os.getloadavg()
    summary = summarise(measured["raw"])
    payload: dict[str, Any] = {
        "started": began.isoformat(),
        "elapsed_seconds": elapsed,
        "machine": info,
        "versions": _versions(),
        "config": {
            "reps": args.reps,
            "quick": args.quick,
            "tiny_n": TINY_N,
            "roundtrip_calls": CALLS,
            "roundtrip_idle_calls": IDLE_CALLS,
            "roundtrip_idle_gap_s": IDLE_GAP,
            "task_timeout_s": TASK_TIMEOUT,
            "sleep_s": SLEEP,
            "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True, "
            "host='127.0.0.1', dashboard_address=None)",
            "contenders": list(CONTENDERS),
        },
        "cluster": measured["cluster"],
        "timings": measured["timings"],
        "summary": summary,
        "raw": measured["raw"],
        "warm_up_discarded": measured["warm_up"],
    }
    rows = table_rows(summary)
    load = (
        " / ".join(f"{a:.2f}" for a in info["load_average_before"])
        + " before, "
        + " / ".join(f"{a:.2f}" for a in info["load_average_after"])
        + " after"
    )
    print(
        f"safepool on a Dask cluster vs plain Dask: {began:%Y-%m-%d %H:%M} UTC, "
        f"{info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
        f"distributed {payload['versions']['distributed']}\n"
        f"LocalCluster: 2 workers x 1 thread, 127.0.0.1; {args.reps} repetitions "
        f"(contenders in rotating order); load average {load}; run {elapsed:.0f} s\n"
    )
    print(text_table(rows))
    print("\nMedian (min-max) over the repetitions:\n")
    print(detail_table(summary))
    t = measured["timings"]
    print(
        f"\nCluster start {t['cluster_start_s']:.2f} s, executor created in "
        f"{_ms(t['executor_create_s'])}, shut down in {_ms(t['executor_shutdown_s'])}; "
        f"cluster closed in {t['cluster_close_s']:.2f} s."
    )
    print("\nMarkdown:\n")
    print(markdown_table(rows))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cluster.json").write_text(json.dumps(payload, indent=2) + "\n")
    chart_path = out_dir / "cluster.png" if args.chart_in_out else CHART
    try:
        chart(payload, chart_path)
    except ImportError as exc:
        _progress(f"No chart ({exc}): pip install matplotlib")
    else:
        _progress(f"chart: {chart_path}")
    _progress(f"raw results: {out_dir / 'cluster.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
