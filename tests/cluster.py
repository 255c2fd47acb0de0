"""Real Dask clusters on 127.0.0.1 for the cluster tests: no mocks.

- ``dask_client``: a session-wide ``LocalCluster(processes=True)`` of two
  workers with one thread each, and a Client to it;
- ``fresh_cluster()``: a cluster of its own, for a test that kills one of its
  workers (closed by the caller);
- ``cli_cluster``: ``dask scheduler`` and ``dask worker`` started as commands,
  stopped after the test.

tests/conftest.py loads these fixtures for every module. Without
``distributed`` they skip, but fail in CI (``tests.services.importorskip``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.services import HOST, importorskip

ROOT = Path(__file__).resolve().parent.parent


def cluster_kwargs(**kwargs):
    kw = dict(
        n_workers=2, threads_per_worker=1, processes=True, host=HOST,
        # None still serves the dashboard on :8787, and a second cluster at once then warns
        # that the port is taken: a free port, on loopback.
        dashboard_address=f"{HOST}:0", silence_logs=logging.ERROR,
    )
    kw.update(kwargs)
    return kw


def _warm_worker():
    """Start the worker's forkserver and resource tracker, which outlive any one pool."""
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    forkserver.ensure_running()
    return os.getpid()


def warm(client) -> dict[str, int]:
    """Each worker's pid, after starting what stays for the worker's life."""
    return client.run(_warm_worker)


def fresh_cluster(**kwargs):
    distributed = importorskip("distributed")
    cluster = distributed.LocalCluster(**cluster_kwargs(**kwargs))
    client = distributed.Client(cluster, set_as_default=False)
    warm(client)
    return cluster, client


@pytest.fixture(scope="session")
def dask_client():
    cluster, client = fresh_cluster()
    yield client
    client.close()
    cluster.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _dask_command(*args: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__ADMIN__TICK__LIMIT="1h")
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],  # the ``dask`` command, of this interpreter
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
        start_new_session=True,
    )


def wait_for_workers(address: str, n: int, timeout: float = 60.0):
    distributed = importorskip("distributed")
    client = distributed.Client(address, set_as_default=False, timeout=timeout)
    client.wait_for_workers(n, timeout=timeout)
    return client


@pytest.fixture
def cli_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` commands: one with ``--resources GPU=1``.

    Yields ``(address, client)``; everything is stopped, process group by group, after.
    """
    importorskip("distributed")
    port = _free_port()
    address = f"tcp://{HOST}:{port}"
    procs = [_dask_command("scheduler", "--host", HOST, "--port", str(port),
                           "--dashboard-address", ":0", "--no-dashboard",
                           log=tmp_path / "scheduler.log")]
    client = None
    try:
        for name, extra in (("plain", []), ("gpu", ["--resources", "GPU=1"])):
            procs.append(_dask_command(
                "worker", address, "--nthreads", "1", "--nworkers", "1", "--host", HOST,
                "--no-dashboard", "--name", name, *extra, log=tmp_path / f"worker-{name}.log",
            ))
        client = wait_for_workers(address, 2)
        warm(client)
        yield address, client
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def node_of(pids) -> int | None:
    """In a task: which of ``pids`` (Dask worker processes) this pool process belongs to."""
    proc = psutil.Process()
    while proc is not None:
        if proc.pid in pids:
            return proc.pid
        proc = proc.parent()
    return None
