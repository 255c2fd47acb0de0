"""Prefetch: short tasks wait in a busy worker's pipe, and are still run exactly once.

Each test first runs tiny tasks, so the pool sees short tasks and prefetches;
then one task holds the only worker (on a named-pipe gate) while more tasks are
submitted, and the test checks that those really went into that worker's pipe
before it makes the worker die, poison itself or stops tasks. Every task notes
its start (tag and pid) on the test's FIFO, so "ran exactly once, and where" is
checked from the worker side.
"""

from __future__ import annotations

import time

import pytest

import safepool
from tests import prefetch_tasks as pt
from tests import tasks
from tests.conftest import open_gate

pytestmark = pytest.mark.timeout(60)

TAGS = [f"t{i}" for i in range(10)]


def _waiting_in_pipe(pool: safepool.Executor) -> int:
    """How many tasks wait in the pipes of busy workers (white-box: the manager's view)."""
    return sum(max(0, len(w.inflight) - 1) for w in list(pool._engine._workers.values()))


def _wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def _hold_one_worker(pool, fifo, gate, fn):
    """Make the pool prefetch, then occupy its worker with ``fn``; return (future, pid)."""
    # Short tasks first: the pool sees tasks are short, and prefetches.
    assert list(pool.map(tasks.add, range(100))) == list(range(100))
    head = pool.submit(fn, fifo.path, "head", gate)
    tag, pid = fifo.line().split()
    assert tag == "head"
    return head, int(pid)


def _submit_waiting(pool, fifo):
    futures = [pool.submit(pt.note, fifo.path, tag) for tag in TAGS]
    _wait_until(lambda: _waiting_in_pipe(pool) == len(TAGS), "the tasks wait in the pipe")
    return futures


def _starts(fifo, count: int) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for _ in range(count):
        tag, pid = fifo.line().split()
        seen.setdefault(tag, []).append(int(pid))
    return seen


def test_tasks_waiting_behind_a_crash_run_once_elsewhere(make_pool, fifo, gate):
    pool = make_pool(1)
    head, pid = _hold_one_worker(pool, fifo, gate, pt.note_then_die)
    futures = _submit_waiting(pool, fifo)
    open_gate(gate)  # the head kills its own worker
    with pytest.raises(safepool.WorkerCrashedError, match=str(pid)):
        head.result(timeout=30)
    assert [f.result(timeout=30) for f in futures] == TAGS
    seen = _starts(fifo, len(TAGS))
    assert sorted(seen) == sorted(TAGS)
    assert all(len(pids) == 1 and pids[0] != pid for pids in seen.values()), seen
    assert fifo.pending() == ""  # nothing ran twice
    stats = pool.stats()
    assert (stats.crashed, stats.completed) == (1, 100 + len(TAGS))


def test_tasks_waiting_behind_a_poisoned_task_never_run_on_that_worker(make_pool, fifo, gate):
    pool = make_pool(1)
    head, pid = _hold_one_worker(pool, fifo, gate, pt.note_then_poison)
    futures = _submit_waiting(pool, fifo)
    open_gate(gate)
    assert head.result(timeout=30) == "head"
    assert [f.result(timeout=30) for f in futures] == TAGS
    seen = _starts(fifo, len(TAGS))
    assert all(len(pids) == 1 and pids[0] != pid for pids in seen.values()), seen
    assert fifo.pending() == ""
    assert pool.stats().recycled["poisoned"] == 1


def test_stopping_a_waiting_task_skips_it_and_keeps_the_worker(make_pool, fifo, gate):
    pool = make_pool(1)
    head, pid = _hold_one_worker(pool, fifo, gate, pt.note_then_wait)
    futures = _submit_waiting(pool, fifo)
    stopped = futures[3]
    assert pool.stop_task(stopped) is True
    with pytest.raises(safepool.TaskStoppedError):
        stopped.result(timeout=0)  # failed at once, before the worker got to it
    open_gate(gate)
    assert head.result(timeout=30) == "head"
    others = [f for f in futures if f is not stopped]
    assert [f.result(timeout=30) for f in others] == [t for t in TAGS if t != TAGS[3]]
    seen = _starts(fifo, len(TAGS) - 1)
    assert TAGS[3] not in seen  # it never started
    assert all(pids == [pid] for pids in seen.values()), seen  # same worker: not killed
    assert fifo.pending() == ""
    stats = pool.stats()
    assert (stats.stopped, stats.recycled["stopped"]) == (1, 0)


def test_stopping_the_running_task_re_sends_those_waiting_behind_it(make_pool, fifo, gate):
    pool = make_pool(1)
    head, pid = _hold_one_worker(pool, fifo, gate, pt.note_then_wait)
    futures = _submit_waiting(pool, fifo)
    assert pool.stop_task(head) is True
    with pytest.raises(safepool.TaskStoppedError):
        head.result(timeout=30)
    assert [f.result(timeout=30) for f in futures] == TAGS
    seen = _starts(fifo, len(TAGS))
    assert all(len(pids) == 1 and pids[0] != pid for pids in seen.values()), seen
    assert fifo.pending() == ""
    assert pool.stats().stopped == 1


@pytest.mark.parametrize("spares", [0, 1])
def test_a_recycled_worker_is_replaced_while_its_last_task_runs(make_pool, fifo, gate, spares):
    # No resources, no initializer: the replacement need not wait for the old worker to
    # exit. It starts at once, but takes work only once the last task is done: with
    # max_workers=1, tasks still run one at a time. A spare, started with the first
    # task, is there beside them (the counts below hold until the gate opens).
    pool = make_pool(1, max_tasks_per_child=1, spare_workers=spares)
    head = pool.submit(pt.note_then_wait, fifo.path, "head", gate)
    tag, pid = fifo.line().split()
    _wait_until(lambda: len(pool._processes) == 1 + spares, "the first worker (and spare)")
    following = pool.submit(pt.note, fifo.path, "next")
    _wait_until(lambda: len(pool._processes) == 2 + spares, "the replacement has started")
    _wait_until(lambda: sum(w.state == "idle" for w in pool.stats().workers) == 1 + spares,
                "the replacement is ready")
    assert not head.done()  # the first worker's last task is still running...
    assert fifo.pending() == ""  # ...and the next task waits for it
    open_gate(gate)
    assert head.result(timeout=30) == "head"
    assert following.result(timeout=30) == "next"
    tag, next_pid = fifo.line().split()
    assert tag == "next" and next_pid != pid


def test_tasks_waiting_behind_a_stopped_task_are_stopped_with_the_pool(make_pool, fifo, gate):
    # stop_task() kills the worker, which ignores SIGTERM, so it is reaped only after
    # kill_grace, when terminate_workers() has begun: the tasks that waited in its pipe
    # must then fail, not start on a new worker.
    pool = make_pool(1, kill_grace=1.0)
    head, _ = _hold_one_worker(pool, fifo, gate, pt.note_ignore_sigterm_then_wait)
    waiting = [pool.submit(pt.note_then_wait, fifo.path, tag, gate) for tag in TAGS]
    _wait_until(lambda: _waiting_in_pipe(pool) == len(TAGS), "the tasks wait in the pipe")
    assert pool.stop_task(head) is True
    pool.terminate_workers()
    for future in [head, *waiting]:
        with pytest.raises(safepool.TaskStoppedError):
            future.result(timeout=30)
