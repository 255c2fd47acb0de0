"""Workers are replaced after N tasks or when their memory crosses a limit."""

from __future__ import annotations

import psutil
import pytest

from tests import tasks


def runs(pids):
    """Lengths of the runs of equal consecutive pids."""
    lengths = []
    for i, pid in enumerate(pids):
        if i and pid == pids[i - 1]:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_tasks_per_child_replaces_each_worker_after_n_tasks(make_pool, n):
    pool = make_pool(1, max_tasks_per_child=n, spare_workers=0)
    pids = [pool.submit(tasks.pid).result(timeout=30) for _ in range(2 * n + 1)]
    assert runs(pids) == [n, n, 1]
    assert len(set(pids)) == 3


@pytest.mark.parametrize("n", [1, 2, 3])
def test_with_a_spare_no_worker_runs_more_than_n_tasks(make_pool, n):
    pool = make_pool(1, max_tasks_per_child=n)  # one spare by default when recycling
    pids = [pool.submit(tasks.pid).result(timeout=30) for _ in range(3 * n + 1)]
    assert all(pids.count(pid) <= n for pid in pids)
    assert len(set(pids)) >= 4


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_recycling_with_n_above_1_and_many_workers_does_not_deadlock(make_pool):
    # The stdlib deadlocks here on 3.11.7 to 3.13.0 (gh-115634).
    pool = make_pool(2, max_tasks_per_child=3)
    pids = list(pool.map(tasks.pid, range(60), timeout=120))
    assert len(pids) == 60
    assert len(set(pids)) >= 20
    assert all(count <= 3 for count in (pids.count(p) for p in set(pids)))


def test_max_memory_per_child_replaces_a_worker_that_grew(make_pool):
    # What a fresh worker weighs (not the parent, which grows over a test session).
    probe = make_pool(1)
    baseline = psutil.Process(probe.submit(tasks.pid).result(timeout=30)).memory_info().rss
    probe.shutdown()
    pool = make_pool(1, max_memory_per_child=baseline + 80 * 2**20)
    small = [pool.submit(tasks.pid).result(timeout=30) for _ in range(3)]
    assert len(set(small)) == 1  # under the limit: kept
    grown = pool.submit(tasks.hog, 160).result(timeout=30)
    assert grown == small[0]
    after = pool.submit(tasks.pid).result(timeout=30)
    assert after != grown  # crossed the limit: replaced after that task


@pytest.mark.parametrize("workers", [1, 2])
def test_recycling_never_runs_more_than_max_workers_tasks_at_once(make_pool, workers):
    """A replacement may start while its predecessor runs its last task (recycling costs
    no idle time), but it takes work only once that task is done: max_workers bounds the
    tasks running at once, as in the stdlib."""
    pool = make_pool(workers, max_tasks_per_child=1)
    futures = [pool.submit(tasks.span, 0.3) for _ in range(3 * workers)]
    spans = [f.result(timeout=60) for f in futures]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == workers, spans
