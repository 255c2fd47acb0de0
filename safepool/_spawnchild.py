"""The first code a worker started by safepool's spawn runs (``safepool._local.spawn``).

multiprocessing's spawn starts ``python -c "from multiprocessing.spawn import
spawn_main; ..."``, and the new interpreter imports most of multiprocessing
(contexts, reduction, sockets, connections) before it reads a byte of its
task. A worker needs none of that: it talks to the parent over bare pipes. So
safepool's spawn runs this module instead::

  parent (manager thread)                     worker (new interpreter)
  -----------------------                     ------------------------
  safepool._local.spawn.SpawnPopen            python -c "...; main(tracker_fd, setup_fd)"
    setup = multiprocessing's preparation       read the setup
    data, and the Process's own state  ─pipe─>  sys.path, sys.argv, cwd; stdin -> /dev/null
    target, args: pickled as                    run the main script as __mp_main__
    multiprocessing pickles them                unpickle target and args; run target
    (descriptors cross as PassedFd)             sys.exit with the exit code

Whatever the worker does with multiprocessing still works as under the
stdlib's spawn: when ``multiprocessing.context`` is first imported (by a
task, by the main script, or by unpickling a Queue or Lock in ``initargs``),
a post-import hook (``_importhooks``) gives the new module the state multiprocessing's own child
bootstrap would have given it: this process's ``current_process()`` (name,
authkey, identity, parent), ``parent_process()``, the start method, the
original directory, and the parent's resource tracker. Nothing here imports
multiprocessing.
"""

from __future__ import annotations

import _pickle as pickle  # what pickle exports, without its imports (see _transport)
import os
import sys

from safepool._importhooks import after_import

TYPE_CHECKING = False  # not typing's: this runs first in every new worker
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

__all__ = ["PassedFd", "main", "process_name"]


class PassedFd:
    """A file descriptor the child inherits at spawn (what ``DupFd`` makes while spawning).

    It has the shape of multiprocessing's ``popen_spawn_posix._DupFd``, so
    multiprocessing's own reducers (a Queue's pipe, a Connection) rebuild
    from it in the child.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        """The descriptor, now owned by the caller."""
        return self.fd


#: The setup the parent sent, kept for the multiprocessing hooks below.
_setup: dict[str, Any] = {}
#: The tracker's descriptor and the parent's liveness pipe, for the same.
_fds: dict[str, int] = {}
#: True while the main script re-runs and the target and its arguments are unpickled
#: (multiprocessing's ``_inheriting``).
_inheriting = False
#: The interpreter's own ``__main__``, kept alive once the parent's main script replaces it.
_old_main: list[ModuleType] = []


def main(tracker_fd: int, setup_fd: int) -> None:
    """Read the setup and the target from ``setup_fd``, run the target, exit."""
    _fds["tracker"] = tracker_fd
    _fds["parent"] = os.dup(setup_fd)  # EOF once the parent is gone: parent_process()
    with open(setup_fd, "rb", closefd=True) as source:
        _setup.update(pickle.load(source))
        # As in multiprocessing's child: a main script without its
        # ``if __name__ == "__main__":`` guard that starts a process while it is
        # re-run here gets multiprocessing's "bootstrapping phase" RuntimeError.
        _set_inheriting(True)
        try:
            _prepare(_setup)
            target, args, kwargs = pickle.load(source)
        finally:
            _set_inheriting(False)
    _after_start()
    _quiet_stdin()
    sys.exit(_run(target, args, kwargs))


def process_name() -> str:
    """This process's name, as ``multiprocessing.current_process().name`` gives it."""
    return str(_setup.get("name", "MainProcess"))


def _prepare(setup: dict[str, Any]) -> None:
    """What multiprocessing's ``spawn.prepare`` does, minus importing multiprocessing."""
    # Installed before the main script runs: it may import multiprocessing.
    after_import("multiprocessing.context", _fix_context)
    after_import("multiprocessing.resource_tracker", _fix_resource_tracker)
    if setup.get("log_to_stderr") or "log_level" in setup:
        after_import("multiprocessing.util", _fix_util)
    sys.path[:] = setup["sys_path"]
    sys.argv = setup["sys_argv"]
    os.chdir(setup["dir"])
    if "init_main_from_name" in setup:
        _main_from_name(setup["init_main_from_name"])
    elif "init_main_from_path" in setup:
        _main_from_path(setup["init_main_from_path"])


def _quiet_stdin() -> None:
    """stdin reads nothing, as in every multiprocessing child: the terminal is the parent's."""
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            sys.stdin = open(fd, encoding="utf-8", closefd=False)  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise
    except (OSError, ValueError):
        pass


def _main_from_name(name: str) -> None:
    """Re-run a main module started with ``-m`` as ``__mp_main__``, so its functions unpickle.

    A package's ``__main__`` is left alone: it runs its "main only" code
    unguarded, as multiprocessing assumes too.
    """
    if name == "__main__" or name.endswith(".__main__"):
        return
    import runpy

    _install_main(runpy.run_module(name, run_name="__mp_main__", alter_sys=True))


def _main_from_path(path: str) -> None:
    """Re-run the parent's main script as ``__mp_main__`` (its ``if __name__ ==
    "__main__":`` block does not run). IPython's launcher has no such guard and
    is skipped, as multiprocessing skips it."""
    if os.path.splitext(os.path.basename(path))[0] == "ipython":
        return
    import runpy

    _install_main(runpy.run_path(path, run_name="__mp_main__"))


def _install_main(namespace: dict[str, Any]) -> None:
    import types

    _old_main.append(sys.modules["__main__"])
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _run(target: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Run the target; the exit code multiprocessing's ``Process._bootstrap`` would give."""
    try:
        target(*args, **kwargs)
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except BaseException:
        import traceback

        sys.stderr.write(f"Process {_setup['name']}:\n")
        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (AttributeError, ValueError):
                pass


def _fix_context(context: ModuleType) -> None:
    """This process as multiprocessing's own spawn bootstrap makes it (``spawn.prepare``
    and ``Process._bootstrap``): its ``current_process()`` is the ``Process`` the
    parent started, with the parent's authkey; ``parent_process()`` is the parent."""
    process: Any = sys.modules["multiprocessing.process"]
    me = context.SpawnProcess.__new__(context.SpawnProcess)
    me.__dict__.update(_setup["process"])
    me._config = dict(me._config, authkey=process.AuthenticationString(_setup["authkey"]))
    if _inheriting:
        me._inheriting = True
    process._current_process = me
    process._parent_process = process._ParentProcess(
        me._parent_name, me._parent_pid, _fds["parent"]
    )
    process.ORIGINAL_DIR = _setup["orig_dir"]
    if "start_method" in _setup:
        context._default_context.set_start_method(_setup["start_method"], force=True)
    context._force_start_method("spawn")


def _fix_resource_tracker(tracker: ModuleType) -> None:
    """Use the parent's resource tracker, as a multiprocessing child does, rather than
    start one of its own for the semaphores or shared memory a task makes."""
    tracker._resource_tracker._fd = _fds["tracker"]


def _fix_util(util: ModuleType) -> None:
    """The parent's ``multiprocessing.log_to_stderr()`` and logger level, as ``spawn.prepare``
    applies them."""
    if _setup.get("log_to_stderr"):
        util.log_to_stderr()
    if "log_level" in _setup:
        util.get_logger().setLevel(_setup["log_level"])


def _set_inheriting(flag: bool) -> None:
    """multiprocessing's ``_inheriting`` flag, here and on ``current_process()`` if loaded."""
    global _inheriting
    _inheriting = flag
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return
    me = process.current_process()
    if flag:
        me._inheriting = True
    elif getattr(me, "_inheriting", False):
        del me._inheriting


def _after_start() -> None:
    """What ``Process._bootstrap`` does before the target runs, if multiprocessing is loaded:
    drop the finalizers registered so far and run the after-fork hooks."""
    util: Any = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._finalizer_registry.clear()
        util._run_after_forkers()
