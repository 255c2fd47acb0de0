"""What only a cluster has: real Dask clusters on 127.0.0.1, real kills, real signals.

The behaviour both engines share is in tests/test_engines.py; here: functions
from ``__main__``, daemonic workers, a Dask worker SIGKILLed mid-run, a node
that lost its plugin, the ``dask scheduler``/``dask worker`` commands with
abstract resources, TLS, Ctrl-C in the client, and bad input.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.services import importorskip

importorskip("distributed")

import safepool  # noqa: E402
from tests import resource_defs as rd  # noqa: E402
from tests import tasks  # noqa: E402
from tests.cluster import ROOT, descendants, fresh_cluster, node_of, until  # noqa: E402
from tests.conftest import run_script, stop_script, wait_gone  # noqa: E402


def _address(client) -> str:
    return client.scheduler.address


def _plugins(dask_worker):
    return sorted(name for name in dask_worker.plugins if name.startswith("safepool-"))


def _daemon_setting():
    import dask

    return dask.config.get("distributed.worker.daemon")


def test_functions_from_main_run_on_the_cluster(dask_client):
    """A script's own functions and classes, which no worker can import, are cloudpickled."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "cluster_main.py"),
         _address(dask_client)],
        capture_output=True, text=True, timeout=90, cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 3, 6, 9] 7"


def test_lambdas_and_closures_work_as_on_dask(dask_client):
    offset = 10
    with safepool.Executor(cluster=dask_client) as pool:
        assert pool.submit(lambda x: x + offset, 5).result(timeout=30) == 15


def test_daemonic_dask_workers_can_host_the_pool(dask_client):
    # LocalCluster's workers are daemonic (the default); nothing needs changing.
    assert set(dask_client.run(_daemon_setting).values()) == {True}
    with safepool.Executor(cluster=dask_client) as pool:
        assert pool.submit(tasks.add, 1, 2).result(timeout=30) == 3


def test_shutdown_unregisters_the_plugin_and_ends_every_node_process(dask_client, tmp_path):
    log = str(tmp_path / "events.log")
    pool = safepool.Executor(cluster=dask_client, resources=[rd.session_resource(log)])
    assert all(dask_client.run(_plugins).values())
    pids = {pool.submit(tasks.pid).result(timeout=30) for _ in range(4)}
    pool.shutdown()
    assert not any(dask_client.run(_plugins).values())
    assert wait_gone(pids) == []
    kinds = [line[0] for line in rd.read_log(log)]
    assert kinds.count("setup") == kinds.count("teardown") == len(pids)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(tasks.add, 1)


def test_a_dask_worker_sigkilled_mid_run_loses_no_future(fifo):
    cluster, client = fresh_cluster()
    try:
        pool = safepool.Executor(cluster=client)
        futures = [pool.submit(tasks.note_start_then_sleep, fifo.path, i, 0.3) for i in range(12)]
        first = fifo.line(timeout=30).split()
        victim_pid = int(first[1])  # a pool process; its Dask worker is its forkserver's parent
        workers = client.run(os.getpid)
        victim = next(pid for pid in workers.values() if victim_pid in descendants(pid))
        doomed = descendants(victim)
        os.kill(victim, signal.SIGKILL)
        assert sorted(f.result(timeout=60) for f in futures) == list(range(12))
        assert wait_gone(doomed | {victim}) == [], "a process of the killed worker was left"
        pool.shutdown()
    finally:
        client.close()
        cluster.close()


def _drop_node_pool(executor_id, dask_worker=None):
    """What a reconnect to the scheduler does to a worker (distributed#5125): no plugin."""
    from safepool._dask import node

    dask_worker.plugins.pop(node.plugin_name(executor_id), None)
    pool = node._pools.pop(executor_id, None)
    if pool is not None:
        pool.pool.shutdown(True, False)
    return pool is not None


def test_a_node_that_lost_its_plugin_starts_the_pool_on_first_use(dask_client):
    with safepool.Executor(cluster=dask_client, timeout=30) as pool:
        before = pool.submit(tasks.pid).result(timeout=30)
        assert any(dask_client.run(_drop_node_pool, pool._engine.id).values())
        after = [pool.submit(tasks.pid).result(timeout=30) for _ in range(4)]
        assert before not in after  # a new pool, started by the calls themselves
        with pytest.raises(safepool.TaskTimeoutError):  # with the executor's settings
            pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)


def test_dask_scheduler_and_worker_commands_with_abstract_resources(cli_cluster, tmp_path):
    address, client = cli_cluster
    info = client.scheduler_info()["workers"]
    names = {pid: info[address]["name"] for address, pid in client.run(os.getpid).items()}
    log = str(tmp_path / "events.log")
    pool = safepool.Executor(cluster=address, resources=[rd.session_resource(log)])
    gpu = pool.options(dask_resources={"GPU": 1})
    on_gpu = {gpu.submit(node_of, set(names)).result(timeout=30) for _ in range(6)}
    assert {names[pid] for pid in on_gpu} == {"gpu"}
    assert list(gpu.map(tasks.add, range(3))) == [0, 1, 2]
    anywhere = {pool.submit(node_of, set(names)).result(timeout=30) for _ in range(8)}
    assert {names[pid] for pid in anywhere} <= {"gpu", "plain"}
    pool.shutdown()
    kinds = [line[0] for line in rd.read_log(log)]
    assert kinds.count("setup") == kinds.count("teardown") >= 1


def test_tls_clusters_are_used_with_the_clients_security():
    importorskip("cryptography")
    from distributed.security import Security

    security = Security.temporary()
    cluster, client = fresh_cluster(security=security, protocol="tls://")
    try:
        assert client.scheduler.address.startswith("tls://")
        with safepool.Executor(cluster=client, timeout=30) as pool:
            assert pool.submit(tasks.add, 20, 22).result(timeout=30) == 42
            with pytest.raises(safepool.TaskTimeoutError):
                pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("mode", ["result", "with"])
def test_ctrl_c_in_the_client_is_quiet_and_stops_the_cluster_work(mode, dask_client, fifo):
    script = run_script("cluster_ctrl_c.py", mode, fifo.path, _address(dask_client))
    try:
        pids = []
        for _ in range(2):  # both Dask workers busy, four calls waiting
            pids += [int(p) for p in fifo.line(timeout=60).split()]
        os.killpg(script.pid, signal.SIGINT)
        _, err = script.communicate(timeout=30)
    finally:
        stop_script(script)
    assert err.count("Traceback (most recent call last)") == 1, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert wait_gone(pids, timeout=10) == [], "a task's process outlived the client's Ctrl-C"
    assert fifo.pending() == ""  # the queued calls were cancelled: none of them started
    assert not any(dask_client.run(_plugins).values())


def test_bad_input_is_refused_with_a_clear_error(dask_client):
    with pytest.raises(TypeError, match=r"distributed\.Client or a scheduler address"):
        safepool.Executor(cluster=8786)
    with pytest.raises(ValueError, match="only to an executor on a cluster"):
        safepool.Executor(1).options(dask_resources={"GPU": 1})
    pool = safepool.Executor(cluster=dask_client)
    with pytest.raises(ValueError, match="positive amounts"):
        pool.options(dask_resources={"GPU": 0})
    pool.shutdown()


def test_import_safepool_imports_no_dask():
    code = (
        "import sys, safepool; safepool.Executor; safepool.task; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=str(ROOT), check=True).stdout
    assert out.strip() == "[]"


def test_a_stopped_remote_call_is_killed_not_rescheduled(dask_client, fifo):
    with safepool.Executor(cluster=dask_client) as pool:
        future = pool.submit(tasks.spawn_tree_and_hang, fifo.path)
        pids = [int(p) for p in fifo.line(timeout=30).split()]
        assert pool.stop_task(future)
        with pytest.raises(safepool.TaskStoppedError):
            future.result(timeout=30)
        assert wait_gone(pids) == []
        assert pool.submit(tasks.add, 3).result(timeout=30) == 3
    assert fifo.pending() == ""  # it never ran again anywhere


def test_shutdown_without_waiting_still_tears_the_nodes_down(dask_client, fifo):
    pool = safepool.Executor(cluster=dask_client)
    running = pool.submit(tasks.note_start_then_sleep, fifo.path, "last", 0.5)
    pid = int(fifo.line(timeout=30).split()[1])
    pool.shutdown(wait=False)  # returns at once; the running call still finishes
    assert running.result(timeout=30) == "last"
    until(lambda: not any(dask_client.run(_plugins).values()), what="plugins unregistered")
    assert wait_gone([pid]) == []


def test_settings_from_main_or_fork_are_refused_or_warned_up_front(dask_client):
    code = (
        "import sys, safepool\n"
        "def setup():\n    return 1\n"
        "try:\n"
        "    safepool.Executor(cluster=sys.argv[1], resources=[safepool.Resource('r', setup)])\n"
        "except ValueError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, _address(dask_client)],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT)).stdout
    assert "defined in __main__" in out
    with pytest.warns(safepool.ForkWarning, match="forks each Dask worker"):
        safepool.Executor(cluster=dask_client, mp_context="fork").shutdown()
