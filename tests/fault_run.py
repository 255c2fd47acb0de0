"""Runs one fault workload and checks everything the reliability guarantees promise.

Shared by the randomized suite (``tests/test_fault_suite.py``, short) and the soak
(``benchmarks/soak.py``, long). One run:

1. submits one task per drawn kind (``tests/fault_tasks.py``) to a fresh executor;
2. checks that every future resolved exactly once (a done-callback counter), with the
   outcome its kind must give (an argument that cannot be pickled fails its future);
3. checks the executor is still usable, and that ``stats()`` counted each outcome;
4. shuts down and checks that no worker, grandchild, safepool thread, fd or named
   semaphore is left behind.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import safepool
from tests import fault_tasks
from tests.conftest import _alive, _fds, _semaphores, _threads, pool_processes

#: How long a whole workload may take before the run counts as hung.
WORKLOAD_TIMEOUT = 120.0


@dataclass
class RunReport:
    tasks: int
    outcomes: collections.Counter[str]
    stats: safepool.Stats


def fresh_worker_rss(method: str) -> int:
    """Resident memory of a new worker of ``method``, in bytes."""
    with safepool.Executor(1, method, resources=[fault_tasks.PROBE]) as pool:
        pid = pool.submit(os.getpid).result(timeout=60)
        return int(psutil.Process(pid).memory_info().rss)


def _settle(check, what: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``check()`` returns an empty/false value; fail naming it."""
    deadline = time.monotonic() + timeout
    while True:
        left = check()
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after shutdown: {what}: {left}")
        time.sleep(0.02)


class Calls:
    """Counts how often each future's done-callbacks ran (exactly once is the rule).

    ``forget_below(n)`` drops the counts of tokens under ``n`` once they were checked,
    so a long soak holds no per-task state; a callback for such a token afterwards is
    a second resolution and is reported by ``twice()``.
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[int] = collections.Counter()
        self._floor = 0
        self._late: list[int] = []
        self._lock = threading.Lock()

    def watch(self, future: Any, token: int) -> None:
        future.add_done_callback(lambda _f: self._count(token))

    def _count(self, token: int) -> None:
        with self._lock:
            if token < self._floor:
                self._late.append(token)
            else:
                self.counts[token] += 1

    def forget_below(self, floor: int) -> None:
        with self._lock:
            twice = {t: n for t, n in self.counts.items() if t < floor and n != 1}
            self._late += [t for t, n in twice.items() for _ in range(n - 1)]
            self.counts = collections.Counter({t: n for t, n in self.counts.items() if t >= floor})
            self._floor = max(self._floor, floor)

    def twice(self) -> dict[int, int]:
        with self._lock:
            found = {t: n for t, n in self.counts.items() if n != 1}
            for token in self._late:
                found[token] = found.get(token, 1) + 1
        return found


def run_batch(
    pool: safepool.Executor, kinds: Sequence[str], scratch: str, calls: Calls, first_token: int = 0
) -> collections.Counter[str]:
    """Submit one task per kind, wait for all, check each outcome; count them by Stats field."""
    submitted = []
    for token, kind in enumerate(kinds, start=first_token):
        target = pool.options(timeout=fault_tasks.TASK_TIMEOUT) if kind in fault_tasks.TIMED \
            else pool
        future = target.submit(fault_tasks.run, kind, token, scratch, fault_tasks.payload(kind))
        calls.watch(future, token)
        submitted.append((kind, token, future))

    _, not_done = wait([f for *_, f in submitted], timeout=WORKLOAD_TIMEOUT)
    assert not not_done, f"{len(not_done)} future(s) never resolved"
    # Waiters wake before done-callbacks run: let the callbacks catch up.
    _settle(lambda: [t for _, t, _ in submitted if calls.counts[t] == 0], "uncalled callbacks")
    for kind, token, future in submitted:
        fault_tasks.expect(kind, token)(future)
    return collections.Counter(fault_tasks.COUNTER[k] for k, _, _ in submitted)


def check_stats(stats: safepool.Stats, outcomes: collections.Counter[str],
                drawn: collections.Counter[str]) -> None:
    """The executor counted every outcome where it belongs, and every recycle by its reason."""
    for counter in ("completed", "failed", "crashed", "timed_out"):
        assert getattr(stats, counter) == outcomes[counter], (counter, stats, outcomes)
    assert stats.submitted == sum(outcomes.values())
    assert stats.queued == stats.running == stats.cancelled == stats.stopped == 0
    assert stats.recycled["memory"] == drawn["grow"], stats
    assert stats.recycled["poisoned"] == drawn["hook_fails"], stats
    assert stats.recycled["crash"] == outcomes["crashed"], stats
    assert stats.recycled["timeout"] == outcomes["timed_out"], stats


class Baseline:
    """What exists before a run, to check after shutdown that nothing was left behind."""

    def __init__(self) -> None:
        self.processes = pool_processes()
        self.fds = _fds()
        self.semaphores = _semaphores()

    def check_clean(self, scratch: str, grandchildren_drawn: int) -> None:
        grandchildren = [int(p.read_text()) for p in Path(scratch).glob("*.pid")]
        assert len(grandchildren) <= grandchildren_drawn
        _settle(lambda: [p for p in grandchildren if _alive(p)], "grandchildren")
        _settle(lambda: pool_processes() - self.processes, "processes")
        _settle(_threads, "safepool threads")
        _settle(lambda: max(0, _fds() - self.fds), "fds")
        _settle(lambda: _semaphores() - self.semaphores, "named semaphores")


def make_executor(method: str, workers: int, max_tasks: int | None,
                  memory_limit: int) -> safepool.Executor:
    return safepool.Executor(
        workers, method, max_tasks_per_child=max_tasks, max_memory_per_child=memory_limit,
        resources=[fault_tasks.PROBE], kill_grace=0.2, log_unretrieved=False,
    )


def run_workload(
    kinds: Sequence[str],
    *,
    method: str,
    workers: int,
    max_tasks: int | None,
    memory_limit: int,
) -> RunReport:
    """Run one task per entry of ``kinds`` on a fresh executor; raise AssertionError on any
    broken guarantee."""
    scratch = tempfile.mkdtemp(prefix="safepool-fault-")
    baseline = Baseline()
    calls = Calls()
    pool = make_executor(method, workers, max_tasks, memory_limit)
    finished = False
    try:
        outcomes = run_batch(pool, kinds, scratch, calls)
        # Still usable after all of that.
        assert pool.submit(fault_tasks.run, "value", -1, scratch).result(timeout=60) == -1
        outcomes["completed"] += 1
        stats = pool.stats()
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            pool.kill_workers()
    twice = calls.twice()  # checked after shutdown: no late second resolution either
    assert not twice, f"futures resolved more than once: {twice}"
    drawn = collections.Counter(kinds)
    check_stats(stats, outcomes, drawn)
    baseline.check_clean(scratch, drawn["grandchild_timeout"])
    shutil.rmtree(scratch, ignore_errors=True)
    return RunReport(len(kinds), outcomes, stats)
