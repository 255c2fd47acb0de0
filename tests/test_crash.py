"""A worker that dies fails only its own task; the executor stays usable."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal

import pebble
import psutil
import pytest

import safepool
from tests import tasks
from tests.conftest import wait_reaped


@pytest.mark.parametrize(
    ("fn", "args", "exitcode", "text"),
    [
        (tasks.segfault, (), -signal.SIGSEGV, "killed by SIGSEGV"),
        (tasks.exit_with, (0,), 0, "exited with code 0"),
        (tasks.exit_with, (3,), 3, "exited with code 3"),
        (tasks.kill_self, (signal.SIGKILL,), -signal.SIGKILL, "killed by SIGKILL"),
    ],
    ids=["segfault", "exit0", "exit3", "sigkill"],
)
def test_a_crash_fails_only_its_own_future(make_pool, fn, args, exitcode, text):
    pool = make_pool(2)
    bystander = pool.submit(tasks.pid_after, 1.0)
    crashed = pool.submit(fn, *args)
    with pytest.raises(safepool.WorkerCrashedError) as info:
        crashed.result(timeout=30)
    error = info.value
    assert error.exitcode == exitcode
    assert text in str(error) and f"pid {error.pid}" in str(error)
    assert isinstance(error, pebble.ProcessExpired)
    assert isinstance(error, cf.process.BrokenProcessPool)
    assert error.pid != bystander.result(timeout=30)  # the innocent task finished normally
    assert pool.submit(tasks.add, 1, 1).result(timeout=30) == 2


def test_external_sigkill_of_a_busy_worker_fails_its_task_like_an_oom_kill(make_pool, fifo):
    pool = make_pool(1)
    future = pool.submit(tasks.sleep_forever, fifo.path)
    worker = int(fifo.line().split()[1])
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(safepool.WorkerCrashedError) as info:
        future.result(timeout=30)
    assert info.value.pid == worker
    assert info.value.signal == signal.SIGKILL
    assert pool.submit(tasks.add, 2).result(timeout=30) == 2


def test_an_idle_worker_dying_is_replaced_silently(make_pool):
    pool = make_pool(2)
    first = pool.submit(tasks.pid).result(timeout=30)
    os.kill(first, signal.SIGKILL)
    assert wait_reaped([first]) == []
    results = [pool.submit(tasks.pid).result(timeout=30) for _ in range(3)]
    assert first not in results


def test_all_idle_workers_killed_at_once_leaves_a_usable_pool(make_pool):
    pool = make_pool(2)
    pids = set(pool.map(tasks.pid_after, [0.3, 0.3]))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_reaped(pids) == []
    assert pool.submit(tasks.add, 3).result(timeout=30) == 3


def test_a_crash_of_a_worker_with_a_forked_grandchild_is_still_seen(make_pool):
    # The grandchild keeps copies of the worker's fds; detection must not depend on them.
    pool = make_pool(1)
    future = pool.submit(os.system, "sleep 30 & kill -9 $PPID")
    with pytest.raises(safepool.WorkerCrashedError):
        future.result(timeout=30)
    for proc in psutil.Process().children(recursive=True):
        if proc.name() == "sleep":
            proc.kill()


def test_workers_ignore_sigint(make_pool, fifo):
    pool = make_pool(1)
    future = pool.submit(tasks.note_start_then_sleep, fifo.path, "t", 0.5)
    worker = int(fifo.line().split()[1])
    os.kill(worker, signal.SIGINT)
    assert future.result(timeout=30) == "t"


def test_workers_lead_their_own_process_group(make_pool):
    pool = make_pool(1)
    worker = pool.submit(tasks.pid).result(timeout=30)
    assert os.getpgid(worker) == worker
    assert os.getpgid(worker) != os.getpgid(0)
