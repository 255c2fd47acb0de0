"""Real clients of ``concurrent.futures`` executors keep working with safepool's."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

import pytest

import safepool
from tests import aio_tasks, tasks
from tests.services import importorskip

pytestmark = pytest.mark.timeout(60)


def test_dasks_local_scheduler_runs_a_graph_on_a_safepool_executor():
    dask = importorskip("dask")
    with safepool.Executor(2) as pool:
        pids = [dask.delayed(tasks.pid)(i) for i in range(4)]
        total = dask.delayed(sum)([dask.delayed(tasks.add)(i, 1) for i in range(10)])
        got_pids, got_total = dask.compute(pids, total, scheduler=pool)
        assert got_total == sum(range(1, 11))
        assert os.getpid() not in got_pids  # the graph ran in the workers
        assert pool.stats().completed >= 14  # 4 + 10 calls, and the sum, ran in its workers
        with pytest.raises(ValueError, match="from the graph"):
            dask.compute(dask.delayed(tasks.raise_value)("from the graph"), scheduler=pool)


def test_wait_and_as_completed_over_futures_of_safepool_and_the_stdlib(tmp_path):
    release = tmp_path / "release"
    spawn = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=spawn) as stdlib, safepool.Executor(2) as pool:
        slow = pool.submit(aio_tasks.wait_for_path, str(release), 30)
        theirs = stdlib.submit(tasks.add, 1, 2)
        failing = pool.submit(tasks.raise_value, "boom")
        done, not_done = cf.wait([slow, theirs, failing], timeout=30,
                                 return_when=cf.FIRST_EXCEPTION)
        assert failing in done and slow in not_done
        done, not_done = cf.wait([slow, theirs], timeout=30, return_when=cf.FIRST_COMPLETED)
        assert (done, not_done) == ({theirs}, {slow})
        release.touch()
        order = [f.result() for f in cf.as_completed([theirs, slow], timeout=30)]
        assert order == [3, "seen"]
        done, not_done = cf.wait([slow, theirs, failing], timeout=30)
        assert not not_done and isinstance(failing.exception(), ValueError)
