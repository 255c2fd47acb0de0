"""safepool's own spawn bootstrap (``_local.spawn``, ``_spawnchild``) and post-import hooks.

Under the stdlib's spawn context a worker starts without importing
multiprocessing or logging, and gets them set up as the stdlib's child would
have them if a task imports them. Each test checks a worker through a real
spawned process, against the stdlib's own spawned child where there is one.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

import safepool
from safepool import _importhooks
from safepool._local import spawn as local_spawn
from tests import spawn_tasks
from tests.conftest import ROOT, on_obs_logger
from tests.test_logging_bridge import ListHandler

pytestmark = pytest.mark.timeout(120)

HEAVY = ("multiprocessing", "logging", "typing", "traceback", "pickle", "signal")


@pytest.fixture
def spawn_pool():
    pools = []

    def make(*args, **kwargs):
        pool = safepool.Executor(*args, mp_context="spawn", **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.kill_workers()


def _in_stdlib_spawn_child(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=60)


def _run_python(code: str, cwd=ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=cwd, env=environ, timeout=90)


def test_a_spawned_worker_imports_only_what_its_tasks_use():
    # In a fresh interpreter run with -c: a worker re-runs the parent's main module,
    # which would import what it imports (pytest's own, under pytest).
    done = _run_python(f"""
        import safepool
        from tests import spawn_tasks
        with safepool.Executor(1, mp_context="spawn") as pool:
            print(pool.submit(spawn_tasks.loaded, {HEAVY!r}).result(timeout=60))
    """)
    assert done.returncode == 0, done.stderr
    # No multiprocessing: started by safepool's bootstrap, not the stdlib's spawn_main.
    assert done.stdout.strip() == repr(dict.fromkeys(HEAVY, False))


def test_the_transport_pickles_with_the_highest_protocol():
    import pickle

    from safepool import _transport

    assert _transport._PROTOCOL == pickle.HIGHEST_PROTOCOL
    assert _transport.pickle.Pickler is pickle.Pickler  # the C pickler pickle exports


def test_the_forkserver_and_other_contexts_start_workers_the_stdlib_way():
    assert local_spawn.worker_context(multiprocessing.get_context("spawn")) is not None
    assert local_spawn.worker_context(multiprocessing.get_context("forkserver")) is None
    assert local_spawn.worker_context(multiprocessing.get_context("fork")) is None

    class OtherSpawn(type(multiprocessing.get_context("spawn"))):  # another library's
        pass

    assert local_spawn.worker_context(OtherSpawn()) is None


def test_a_spawned_worker_inherits_what_the_stdlibs_child_inherits(spawn_pool):
    ours = spawn_pool(1).submit(spawn_tasks.environment).result(timeout=60)
    theirs = _in_stdlib_spawn_child(spawn_tasks.environment)
    assert ours == theirs
    assert ours["stdin"] == ""  # /dev/null: the terminal stays the parent's
    assert ours["cwd"] == os.getcwd()


def test_multiprocessing_imported_by_a_task_is_set_up_as_in_the_stdlibs_child(spawn_pool):
    ours = spawn_pool(1).submit(spawn_tasks.multiprocessing_state).result(timeout=60)
    theirs = _in_stdlib_spawn_child(spawn_tasks.multiprocessing_state)
    me = multiprocessing.current_process()
    assert ours["authkey"] == bytes(me.authkey) == theirs["authkey"]
    assert ours["parent_pid"] == os.getpid() == theirs["parent_pid"]
    assert ours["parent_alive"] is True and theirs["parent_alive"] is True
    assert ours["name"].startswith("safepool-worker")
    assert ours["pid"] != os.getpid()
    for key in ("daemon", "identity_depth", "start_method", "original_dir", "inheriting"):
        assert ours[key] == theirs[key], key


def test_a_task_that_imports_logging_late_still_logs_to_the_parent(spawn_pool):
    handler = ListHandler()
    with on_obs_logger(handler):
        pool = spawn_pool(1)
        assert pool.submit(spawn_tasks.loaded, ["logging"]).result(timeout=60) == {
            "logging": False}
        pid = pool.submit(spawn_tasks.log_after_importing_logging, "late").result(timeout=60)
    assert handler.messages() == ["late"]
    record = handler.records[0]
    assert record.process == pid
    assert record.processName.startswith("safepool-worker")


def test_a_manager_proxy_in_initargs_works_in_a_spawned_worker(spawn_pool):
    # The proxy connects back to the manager with the parent's authkey: the worker
    # must have it, though it never imported multiprocessing before unpickling it.
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.dict()
        pool = spawn_pool(1, initializer=spawn_tasks.keep, initargs=("dict", shared))
        pid = pool.submit(spawn_tasks.write_to_kept_dict, "seen").result(timeout=60)
        assert shared["seen"] == pid
        pool.shutdown()


def test_a_task_may_start_multiprocessing_children_of_its_own(spawn_pool):
    before = _resource_trackers()
    report = spawn_pool(1).submit(spawn_tasks.start_a_child_process).result(timeout=90)
    assert report["got"] == "from the grandchild"
    assert report["exitcode"] == 0
    # Its semaphores went to the parent's resource tracker, as in a stdlib child.
    assert report["own_tracker_started"] is False
    assert report["children_left"] == []
    assert _resource_trackers() == before


def _resource_trackers() -> set[int]:
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(proc.cmdline()):
                found.add(proc.pid)
        except psutil.Error:
            pass
    return found


def test_a_main_script_without_its_guard_cannot_start_processes_from_workers(tmp_path):
    # As with the stdlib: multiprocessing's "bootstrapping phase" error in each worker,
    # and the pool gives up with advice instead of every worker running the script.
    (tmp_path / "unguarded.py").write_text(textwrap.dedent("""
        import safepool
        with safepool.Executor(1, mp_context="spawn") as pool:
            print("result", pool.submit(abs, -1).result(timeout=60), flush=True)
    """))
    done = subprocess.run([sys.executable, str(tmp_path / "unguarded.py")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=90,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert "result" not in done.stdout
    assert "bootstrapping phase" in done.stderr
    assert "InitializerError" in done.stderr and "__main__" in done.stderr


def test_the_parents_multiprocessing_logging_applies_in_the_worker():
    done = _run_python("""
        import logging, multiprocessing
        import safepool
        from tests import spawn_tasks
        if __name__ == "__main__":
            multiprocessing.log_to_stderr(logging.INFO)
            with safepool.Executor(1, mp_context="spawn", worker_logs=False) as pool:
                pool.submit(spawn_tasks.multiprocessing_info, "hello").result(timeout=60)
    """)
    assert done.returncode == 0, done.stderr
    assert "[INFO/safepool-worker" in done.stderr and "] hello" in done.stderr


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "module"])
def test_functions_of_the_main_module_run_in_spawned_workers(tmp_path, as_module):
    script = textwrap.dedent("""
        import os, sys
        import safepool

        def where(x):
            return x, __name__, os.getpid()

        os.write(1, f"imported as {__name__}\\n".encode())  # one write: workers run at once
        if __name__ == "__main__":
            with safepool.Executor(2, mp_context="spawn", max_tasks_per_child=1) as pool:
                results = list(pool.map(where, range(4)))
            assert [r[0] for r in results] == [0, 1, 2, 3], results
            assert {r[1] for r in results} == {"__mp_main__"}, results
            assert os.getpid() not in {r[2] for r in results}
            print("ok", flush=True)
    """)
    (tmp_path / "spawnmain.py").write_text(script)
    command = ([sys.executable, "-m", "spawnmain"] if as_module
               else [sys.executable, str(tmp_path / "spawnmain.py")])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=90)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "imported as __main__" and lines[-1] == "ok"
    # Each worker re-ran the main module as __mp_main__, without its guarded block.
    assert lines.count("imported as __mp_main__") >= 4


def test_patched_spawn_machinery_is_left_to_run(spawn_pool, monkeypatch):
    # coverage and tracers patch these to follow child processes: their patch must run.
    from multiprocessing import spawn

    prepare = spawn.get_preparation_data

    def with_a_new_key(name):
        return {**prepare(name), "a_tracers_key": 1}

    monkeypatch.setattr(spawn, "get_preparation_data", with_a_new_key)
    assert local_spawn.worker_context(multiprocessing.get_context("spawn")) is None
    pool = spawn_pool(1)
    loaded = pool.submit(spawn_tasks.loaded, ["multiprocessing.spawn"])
    assert loaded.result(timeout=60) == {"multiprocessing.spawn": True}  # spawn_main ran


def test_preparation_data_it_cannot_apply_falls_back_to_the_stdlib(spawn_pool, monkeypatch):
    # As on a newer Python whose multiprocessing sends a key _spawnchild does not know.
    monkeypatch.setattr(local_spawn, "_SETUP_KEYS", local_spawn._SETUP_KEYS - {"dir"})
    pool = spawn_pool(1)
    loaded = pool.submit(spawn_tasks.loaded, ["multiprocessing.spawn"])
    assert loaded.result(timeout=60) == {"multiprocessing.spawn": True}  # spawn_main ran
    assert pool.submit(spawn_tasks.environment).result(timeout=60)["stdin"] == ""


# ------------------------------------------------------------------ post-import hooks


@pytest.fixture
def fresh_module(tmp_path, monkeypatch):
    """The name of a module that exists on sys.path and has not been imported."""
    (tmp_path / "hooked_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hooked_module", raising=False)
    yield "hooked_module"
    sys.modules.pop("hooked_module", None)
    finder = next((f for f in sys.meta_path if isinstance(f, _importhooks._AfterImport)), None)
    if finder is not None:
        finder.pending.pop("hooked_module", None)


def test_a_hook_runs_once_right_after_the_module_is_imported(fresh_module):
    seen = []
    _importhooks.after_import(fresh_module, lambda m: seen.append(m.VALUE))
    assert seen == []
    module = __import__(fresh_module)
    assert seen == [42]
    __import__(fresh_module)
    assert seen == [42]
    # The module shows its real loader, not the hook's wrapper.
    assert type(module.__loader__).__name__ == "SourceFileLoader"
    assert module.__spec__.loader is module.__loader__


def test_a_hook_for_a_module_already_imported_runs_at_once():
    seen = []
    _importhooks.after_import("os", lambda m: seen.append(m.__name__))
    assert seen == ["os"]


def test_a_module_run_outside_the_import_system_leaves_the_hook_for_the_real_import(
    fresh_module,
):
    import importlib.util

    seen = []
    _importhooks.after_import(fresh_module, lambda m: seen.append(m))
    spec = importlib.util.find_spec(fresh_module)
    private = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(private)
    assert seen == []
    module = __import__(fresh_module)
    assert seen == [module] and module is not private


def test_a_failing_hook_does_not_fail_the_import(fresh_module, capsys):
    def broken(_module):
        raise RuntimeError("hook broke")

    _importhooks.after_import(fresh_module, broken)
    assert __import__(fresh_module).VALUE == 42
    err = capsys.readouterr().err
    assert "setting up hooked_module after its import failed" in err
    assert "RuntimeError: hook broke" in err
