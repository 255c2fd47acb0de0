"""Ctrl-C and parent death, through a real parent process and real signals."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests.conftest import run_script, stop_script, wait_gone


def _tree_pids(fifo, count=2):
    pids = []
    for _ in range(count):
        pids += [int(p) for p in fifo.line(timeout=30).split()]
    return pids


@pytest.mark.parametrize(
    "mode", ["with", "with-exit", "result", "map", "exit", "async-with", "async-run"]
)
def test_one_ctrl_c_stops_everything_quietly_and_fast(mode, method, fifo):
    script = run_script("ctrl_c.py", mode, fifo.path, method)
    try:
        pids = _tree_pids(fifo)  # both workers busy, four tasks queued
        start = time.monotonic()
        os.killpg(script.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        _, err = script.communicate(timeout=15)
        elapsed = time.monotonic() - start
    finally:
        stop_script(script)
    # The stdlib takes the whole queue (here minutes) and prints a traceback per idle worker.
    assert elapsed < 1.0, err
    # On 3.11+ asyncio.run turns Ctrl-C into a cancellation of its task, then raises
    # KeyboardInterrupt "during handling of" that CancelledError: its own two tracebacks,
    # none from a worker. (On 3.10 the KeyboardInterrupt comes out of the loop: one.)
    tracebacks = 2 if mode.startswith("async-") and sys.version_info >= (3, 11) else 1
    assert err.count("Traceback (most recent call last)") == tracebacks, err
    assert "Process " not in err and "safepool-worker" not in err, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert script.returncode in (-signal.SIGINT, 130, 1)
    assert wait_gone(pids, timeout=3) == [], "a worker or a task's process outlived Ctrl-C"
    assert "started" not in fifo.pending()  # queued tasks never started


def test_parent_sigkill_leaves_no_orphans(method, fifo):
    script = run_script("orphans.py", fifo.path, method)
    try:
        idle = [int(p) for p in fifo.line(timeout=30).split()]
        busy_tree = [int(p) for p in fifo.line(timeout=30).split()]
        os.kill(script.pid, signal.SIGKILL)
        # Every process of the pool's tree is gone within a second (the lifeline).
        survivors = wait_gone(idle + busy_tree, timeout=1.0)
    finally:
        stop_script(script)
    assert survivors == []


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_are_started_with_sigint_blocked(method):
    # In a fresh interpreter, where starting the first worker also starts the
    # stdlib's resource tracker (which unblocks SIGINT in its caller's thread).
    import subprocess
    import sys

    from tests.conftest import ROOT, SCRIPTS

    out = subprocess.run([sys.executable, str(SCRIPTS / "sigmask.py"), method],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    expected = ["manager True"] + (["forkserver True"] if method == "forkserver" else [])
    assert out.stdout.split("\n")[:-1] == expected


def test_a_second_ctrl_c_during_the_graceful_stop_kills_at_once(method, fifo):
    script = run_script("ctrl_c_twice.py", fifo.path, method)
    try:
        workers = {int(fifo.line(timeout=30).split()[1]) for _ in range(2)}
        os.killpg(script.pid, signal.SIGINT)
        # The first Ctrl-C asks the running tasks to stop (SIGTERM) and would give them
        # kill_grace (60 s); they ignore it.
        for _ in range(2):
            kind, pid = fifo.line(timeout=10).split()
            assert kind == "sigterm" and int(pid) in workers
        assert script.poll() is None  # still waiting for the tasks
        start = time.monotonic()
        os.killpg(script.pid, signal.SIGINT)
        _, err = script.communicate(timeout=15)
        elapsed = time.monotonic() - start
    finally:
        stop_script(script)
    assert elapsed < 5.0, err  # not the 60 s grace: killed at once
    assert err.count("Traceback (most recent call last)") == 1, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert wait_gone(workers, timeout=1.0) == []
