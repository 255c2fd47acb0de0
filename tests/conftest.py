from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import safepool

# Dask clusters on 127.0.0.1 (tests.cluster): fixtures dask_client, cli_cluster.
pytest_plugins = ["tests.cluster"]

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
METHODS = ["forkserver", "spawn"]


def _is_mp_helper(proc: psutil.Process) -> bool:
    """The interpreter-wide forkserver and resource tracker (stdlib singletons)."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "from multiprocessing." in cmd and ("forkserver" in cmd or "resource_tracker" in cmd)


def pool_processes() -> set[int]:
    """Every descendant of this process except the stdlib's own helper processes.

    Workers started by the forkserver are its children and share its command
    line, so only the helpers themselves (our direct children) are excluded.
    """
    me = psutil.Process()
    helpers = {p.pid for p in me.children() if _is_mp_helper(p)}
    return {p.pid for p in me.children(recursive=True) if p.pid not in helpers}


def _semaphores() -> set[str]:
    """Named POSIX semaphores this process has mapped (not the whole machine's /dev/shm)."""
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if "/dev/shm/sem." in line}


def _fds() -> int:
    """Open fds; once a Dask client exists, not its sockets, which it opens and closes by itself."""
    names = os.listdir("/proc/self/fd")
    if "distributed" not in sys.modules:
        return len(names)
    count = 0
    for name in names:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:  # closed meanwhile (the listing's own fd, or a thread's)
            pass
    return count


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("safepool-")}


def _uses_dask(item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("engine") == "dask":
        return True
    return bool({"dask_client", "cli_cluster"} & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(session, config, items):
    """Run the tests that start Dask clusters last, and the session's cluster with them.

    Once used, distributed leaves process-wide threads behind (its offload and
    callback executors), which tests of fork hazards and of this process's
    threads would see. Files named test_cluster*.py also go last.
    """
    items.sort(key=lambda item: _uses_dask(item) or item.path.name.startswith("test_cluster"))


@pytest.fixture(scope="session", autouse=True)
def _warm_multiprocessing_helpers():
    """Start the forkserver and resource tracker once, so their fds don't count as leaks."""
    for method in METHODS:
        with safepool.Executor(1, method) as pool:
            pool.submit(int).result()
    yield


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Every test must leave no worker, grandchild, safepool thread, fd or semaphore behind."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("engine") == "dask":
        # The session's Dask cluster (tests.cluster) outlives the test: start it first.
        request.getfixturevalue("dask_client")
    before = (pool_processes(), _fds(), _semaphores())
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + 5
    while True:
        after = (pool_processes(), _fds(), _semaphores(), _threads())
        # Fewer fds than before is no leak: an object of an earlier test let go of one.
        leaked = (after[0] - before[0], max(0, after[1] - before[1]), after[2] - before[2],
                  after[3])
        if not any(leaked):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"leaked (processes, fds, semaphores, threads): {leaked}")
        time.sleep(0.05)


class Fifo:
    """A named pipe workers write lines to, so tests wait on events, never on sleeps."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        self._r = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # no EOF between writers
        self._buffer = b""

    def line(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"no line on {self.path} within {timeout}s")
            self._buffer += os.read(self._r, 65536)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def pending(self) -> str:
        try:
            self._buffer += os.read(self._r, 65536)
        except BlockingIOError:
            pass
        return self._buffer.decode()

    def close(self) -> None:
        os.close(self._r)
        os.close(self._keep)


@contextlib.contextmanager
def on_obs_logger(handler: logging.Handler):
    """``handler`` on the parent's ``obs`` logger (INFO, not propagating to pytest's root)."""
    logger = logging.getLogger("obs")
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


@pytest.fixture
def fifo(tmp_path):
    f = Fifo(tmp_path / "events")
    yield f
    f.close()


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


@pytest.fixture
def gate(tmp_path):
    """A named pipe a task waits on (``prefetch_tasks._wait``) until ``open_gate`` writes."""
    path = str(tmp_path / "gate")
    os.mkfifo(path)
    return path


def open_gate(gate: str) -> None:
    """Let the task waiting on ``gate`` go on."""
    fd = os.open(gate, os.O_WRONLY)  # blocks until the task has it open
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


@pytest.fixture
def make_pool(method):
    """Build executors for the parametrized start method; shut them all down afterwards."""
    pools = []

    def make(*args, **kwargs):
        kwargs.setdefault("mp_context", method)
        pool = safepool.Executor(*args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.kill_workers()


def wait_gone(pids, timeout=5.0) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); return survivors."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.02)
    return alive


def wait_reaped(pids, timeout=5.0) -> list[int]:
    """Wait until ``pids`` no longer exist at all (exited and reaped); return survivors.

    A worker whose main thread died shows as a zombie while its other threads
    are still exiting; only once it is reaped is its death complete.
    """
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)]
        if alive:
            time.sleep(0.02)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_script(name: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``tests/scripts/<name>`` in its own session (so signals can target its group)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=env, cwd=str(ROOT), **kwargs,
    )


def stop_script(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()
