"""The entries of a run: each a label in the report, the executor kind it runs, where it runs.

The stdlib is listed twice, as "stdlib" and "stdlib (A/A)": same code, so any
difference between those two is noise, and puts the other ratios in
proportion. "safepool+hooks" takes part only in ``hooks``, the raw
``ceiling`` only in the tiny-task workloads.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks._workloads import WORKLOADS

TINY = frozenset(name for name, w in WORKLOADS.items() if w.tiny)


@dataclass(frozen=True)
class Entry:
    """One row of the report: a label, the executor kind it runs, where it takes part."""

    label: str
    kind: str
    only: frozenset[str] | None = None  # the workloads it takes part in (None: all)
    about: str = ""


#: The stdlib twice: the A/A control.
ENTRIES: tuple[Entry, ...] = (
    Entry("safepool", "safepool", about="safepool.Executor"),
    Entry(
        "safepool+hooks",
        "safepool-hooks",
        frozenset({"hooks"}),
        "safepool with a resource whose no-op before/after hooks run around every task",
    ),
    Entry("stdlib", "stdlib", about="concurrent.futures.ProcessPoolExecutor"),
    Entry("stdlib (A/A)", "stdlib", about="the stdlib again, as a separate entry: the A/A control"),
    Entry("pebble", "pebble", about="pebble.ProcessPool"),
    Entry("loky", "loky", about="loky.ProcessPoolExecutor"),
    Entry("mp.Pool", "mp-pool", about="multiprocessing.Pool"),
    Entry("billiard", "billiard", about="billiard.pool.Pool"),
    Entry("mpire", "mpire", about="mpire.WorkerPool"),
    Entry("deadpool", "deadpool", about="deadpool.Deadpool (deadpool-executor)"),
    Entry(
        "ceiling",
        "ceiling",
        TINY,
        "no pool: the same pickled calls over plain Pipes, one in flight per worker",
    ),
)
BY_LABEL = {e.label: e for e in ENTRIES}
BASELINE = "stdlib"
AA_CONTROL = "stdlib (A/A)"


def takes_part(entry: Entry, workload: str) -> bool:
    return entry.only is None or workload in entry.only
