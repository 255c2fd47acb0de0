"""Starting workers under spawn with safepool's own child bootstrap.

A worker the stdlib's spawn starts imports most of multiprocessing before it
runs a line of safepool, and recycling (``max_tasks_per_child``) or a
timeout's kill pays that for every new worker. Where the context is the
stdlib's own spawn on POSIX, workers are started by [`SpawnPopen`][] instead:
it pickles what multiprocessing's spawn pickles, the same way (under
``set_spawning_popen``, so a ``multiprocessing`` Queue or Lock in
``initargs`` crosses as it always does), and starts ``safepool._spawnchild``
in the new interpreter, which reads it without importing multiprocessing.
``safepool._spawnchild`` shows the data flow and what the child sets up.

Anything else (fork, forkserver, a context of another library such as
``multiprocess``, Windows, a frozen application, or a Python whose
preparation data has keys this module does not know) starts workers the
stdlib's way.
"""

from __future__ import annotations

import io
import os
import sys
from multiprocessing import popen_spawn_posix, resource_tracker, spawn, util
from multiprocessing.context import BaseContext, SpawnContext, SpawnProcess, set_spawning_popen
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

import safepool
from safepool._spawnchild import PassedFd

__all__ = ["SpawnPopen", "worker_context"]

#: The keys of multiprocessing's preparation data that ``_spawnchild`` applies.
_SETUP_KEYS = frozenset({
    "authkey", "dir", "init_main_from_name", "init_main_from_path", "log_level",
    "log_to_stderr", "name", "orig_dir", "start_method", "sys_argv", "sys_path",
})
#: A ``Process``'s attributes that are not sent: the parent's handles on the child.
_NOT_SENT = frozenset({"_target", "_args", "_kwargs", "_popen"})
#: Where the child finds safepool before it has the parent's ``sys.path``.
_SAFEPOOL_HOME = os.path.dirname(os.path.dirname(os.path.abspath(safepool.__file__)))


def worker_context(context: BaseContext) -> BaseContext | None:
    """The context that starts workers with safepool's bootstrap, or None where the
    stdlib's own start is used (anything but the stdlib's spawn on POSIX)."""
    if type(context) is not SpawnContext or sys.platform == "win32":
        return None
    if getattr(sys, "frozen", False):  # a frozen app's executable is not a Python
        return None
    if not _spawn_is_the_stdlibs():
        return None
    return _CONTEXT


def _spawn_is_the_stdlibs() -> bool:
    """Whether multiprocessing's spawn machinery is its own: a tool that patches it (coverage,
    viztracer and other tracers do, to follow child processes) must see its patch run."""
    from multiprocessing import process

    parts = (spawn.get_command_line, spawn.spawn_main, spawn._main, spawn.prepare,
             spawn.get_preparation_data, getattr(process.BaseProcess, "_bootstrap", None))
    return all(getattr(part, "__module__", None) in _STDLIB_MODULES for part in parts)


_STDLIB_MODULES = frozenset({"multiprocessing.spawn", "multiprocessing.process"})


class SpawnPopen(popen_spawn_posix.Popen):
    """multiprocessing's spawn ``Popen``, starting ``safepool._spawnchild`` in the child.

    Descriptors a pickled object asks to pass (``DupFd``) go to the child as
    [`PassedFd`][safepool._spawnchild.PassedFd], which has the shape of the
    stdlib's own and so rebuilds a Queue's pipe or a Connection there too.
    """

    DupFd = PassedFd  # type: ignore[assignment]
    _fds: list[int]  # the descriptors the child inherits (multiprocessing's Popen)

    def _launch(self, process_obj: BaseProcess) -> None:
        setup = spawn.get_preparation_data(process_obj.name)
        tracker_fd = resource_tracker.getfd()
        if tracker_fd is None or not setup.keys() <= _SETUP_KEYS:
            super()._launch(process_obj)  # type: ignore[misc]  # a newer multiprocessing
            return
        self._fds.append(tracker_fd)
        setup["authkey"] = bytes(setup["authkey"])  # unpickled without multiprocessing
        state = {k: v for k, v in vars(process_obj).items() if k not in _NOT_SENT}
        state["_config"] = {k: v for k, v in state["_config"].items() if k != "authkey"}
        setup["process"] = state
        call = (process_obj._target, process_obj._args,  # type: ignore[attr-defined]
                process_obj._kwargs)  # type: ignore[attr-defined]
        buffer = io.BytesIO()
        set_spawning_popen(self)
        try:
            ForkingPickler(buffer).dump(setup)
            ForkingPickler(buffer).dump(call)
        finally:
            set_spawning_popen(None)

        flags: list[str] = util._args_from_interpreter_flags()  # type: ignore[attr-defined]
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()  # EOF on parent_r: the child has exited
            child_r, parent_w = os.pipe()  # the setup, then the call
            # What safepool's first modules import comes from the standard library
            # before safepool's directory goes first on the path.
            code = (f"import sys, _pickle, __future__, threading; "
                    f"sys.path.insert(0, {_SAFEPOOL_HOME!r}); "
                    f"from safepool._spawnchild import main; main({tracker_fd}, {child_r})")
            executable = spawn.get_executable()
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(
                executable, [executable, *flags, "-c", code], self._fds  # type: ignore[arg-type]
            )
            os.close(child_r)
            child_r = None
            os.close(child_w)
            child_w = None
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as pipe:
                pipe.write(buffer.getbuffer())
        finally:
            to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(self, util.close_fds, to_close)  # type: ignore[attr-defined]
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class _WorkerProcess(SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> SpawnPopen:
        return SpawnPopen(process_obj)


class _WorkerContext(SpawnContext):
    Process = _WorkerProcess


_CONTEXT = _WorkerContext()
