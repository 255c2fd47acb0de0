"""The randomized fault suite, short form: mixed workloads of every failure a task can have.

hypothesis draws the mix of outcomes (``tests/fault_tasks.py``), the number of workers
(2 to 4) and ``max_tasks_per_child`` (1 to 4), and shrinks any failure to a small mix.
``tests/fault_run.py`` checks each run: exactly-once resolution with the right outcome,
a usable executor, exact stats, and nothing left behind. The long form is
``python -m benchmarks.soak``.
"""

from __future__ import annotations

import gc

import psutil
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from safepool import _future
from tests import fault_tasks
from tests.fault_run import fresh_worker_rss, run_workload

_limits: dict[str, int] = {}


def memory_limit(method: str) -> int:
    """Well above a fresh worker, well below one that ran a "grow" task."""
    if method not in _limits:
        _limits[method] = fresh_worker_rss(method) + fault_tasks.GROW_MIB // 2 * 2**20
    return _limits[method]


@pytest.mark.timeout(300)
@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(fault_tasks.KINDS), min_size=1, max_size=12),
    workers=st.integers(2, 4),
    max_tasks=st.integers(1, 4),
)
@example(kinds=list(fault_tasks.KINDS), workers=2, max_tasks=2)
@example(kinds=list(reversed(fault_tasks.KINDS)) * 2, workers=4, max_tasks=3)
def test_every_future_resolves_once_with_its_outcome(method, kinds, workers, max_tasks):
    run_workload(
        kinds, method=method, workers=workers, max_tasks=max_tasks,
        memory_limit=memory_limit(method),
    )


@pytest.mark.timeout(300)
def test_parent_memory_does_not_grow_across_runs(method):
    """Run the same mix many times: safepool's own objects are all freed after each run,
    and the parent's resident memory levels off."""
    kinds = [k for k in fault_tasks.KINDS if k != "grow"] * 2
    limit = memory_limit(method)
    rss = []
    for _ in range(6):
        run_workload(kinds, method=method, workers=3, max_tasks=2, memory_limit=limit)
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
        leftovers = [o for o in gc.get_objects() if isinstance(o, _future.SafeFuture)]
        assert leftovers == [], f"{len(leftovers)} futures outlived their run"
    # The first runs warm caches (imports, pickler tables); after that, flat.
    assert rss[-1] - rss[1] < 8 * 2**20, [r // 2**20 for r in rss]
