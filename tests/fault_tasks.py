"""The task outcomes the fault suite draws from, and how each one must end.

``run(kind, token, scratch, payload(kind))`` does what ``kind`` says in a worker;
``expect(kind, token)`` returns a check for the future. The kinds whose argument or result
raises while it is pickled or rebuilt raise BaseExceptions that are not Exceptions
(``tests/hostile_pickles.py``): each must fail only its own future.
Module-level so that workers can import it under forkserver and spawn.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safepool
from tests import hostile_pickles as hp

#: How long tasks drawn to time out may run.
TASK_TIMEOUT = 0.4
#: What a "grow" task adds to its worker's memory, in MiB (the limit is well below).
GROW_MIB = 120

KINDS = (
    "value",
    "raise",
    "raise_unpicklable",
    "raise_unrebuildable",
    "unpicklable_result",
    "unpicklable_arg",
    "arg_exits_on_pickle",
    "arg_interrupts_on_unpickle",
    "result_exits_on_pickle",
    "result_exits_on_unpickle",
    "raise_reduce_raises",
    "raise_rebuild_interrupts",
    "segfault",
    "sigkill",
    "exit0",
    "exit3",
    "timeout",
    "grandchild_timeout",
    "grow",
    "hook_fails",
)
#: Kinds whose task is given a per-call timeout.
TIMED = frozenset({"timeout", "grandchild_timeout"})


class HoldsALock(Exception):
    """Cannot be pickled: it carries a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwo(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` needs two arguments."""

    def __init__(self, left: str, right: str) -> None:
        super().__init__(f"{left}+{right}")


_ballast: list[bytearray] = []
_fail_after_hook = [False]


# ------------------------------------------------------------------ the resource


def probe_setup() -> str:
    return "probe"


def probe_after(_value: str, _outcome: safepool.Outcome) -> None:
    if _fail_after_hook[0]:
        _fail_after_hook[0] = False
        raise RuntimeError("the after hook failed on purpose")


PROBE = safepool.Resource("probe", probe_setup, after=probe_after)


# ------------------------------------------------------------------ the task


def payload(kind: str) -> Any:
    """The argument a task of ``kind`` is sent with (made in the parent)."""
    if kind == "unpicklable_arg":
        return threading.Lock()
    if kind == "arg_exits_on_pickle":
        return hp.RaisesOnPickle(SystemExit)
    if kind == "arg_interrupts_on_unpickle":
        return hp.RaisesWhenRebuiltElsewhere(KeyboardInterrupt)
    return None


def run(kind: str, token: int, scratch: str, _payload: Any = None) -> Any:
    if kind in ("value", "unpicklable_arg", "arg_exits_on_pickle", "arg_interrupts_on_unpickle"):
        return token
    if kind == "result_exits_on_pickle":
        return hp.RaisesOnPickle(GeneratorExit)
    if kind == "result_exits_on_unpickle":
        return hp.RaisesWhenRebuiltElsewhere(SystemExit)
    if kind == "raise_reduce_raises":
        raise hp.ReduceRaises(hp.CustomBase)
    if kind == "raise_rebuild_interrupts":
        raise hp.RebuildRaises(KeyboardInterrupt)
    if kind == "raise":
        raise ValueError(f"task {token} raised")
    if kind == "raise_unpicklable":
        raise HoldsALock(f"task {token}")
    if kind == "raise_unrebuildable":
        raise NeedsTwo(str(token), "x")
    if kind == "unpicklable_result":
        return threading.Lock()
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit0":
        os._exit(0)
    if kind == "exit3":
        os._exit(3)
    if kind == "timeout":
        while True:
            time.sleep(1)
    if kind == "grandchild_timeout":
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        Path(scratch, f"{token}.pid").write_text(str(child.pid))
        while True:
            time.sleep(1)
    if kind == "grow":
        block = bytearray(GROW_MIB * 2**20)
        for i in range(0, len(block), 4096):  # touch every page: real resident memory
            block[i] = 1
        _ballast.append(block)
        return token
    if kind == "hook_fails":
        _fail_after_hook[0] = True
        return token
    raise AssertionError(f"unknown kind {kind}")  # pragma: no cover


# ------------------------------------------------------------------ expectations


def expect(kind: str, token: int) -> Callable[[Any], None]:
    """A check that raises AssertionError unless ``outcome`` is what ``kind`` must give.

    ``outcome`` is the future.
    """

    def returns(future: Any) -> None:
        assert future.result(timeout=0) == token

    def fails_with(cls: type[BaseException], check: Callable[[Any], bool] = lambda e: True):
        def verify(future: Any) -> None:
            error = future.exception(timeout=0)
            assert isinstance(error, cls), f"{kind}: expected {cls.__name__}, got {error!r}"
            assert check(error), f"{kind}: unexpected {error!r}"

        return verify

    def crashed(exitcode: int) -> Callable[[Any], None]:
        return fails_with(safepool.WorkerCrashedError, lambda e: e.exitcode == exitcode)

    checks: dict[str, Callable[[Any], None]] = {
        "value": returns,
        "grow": returns,
        "hook_fails": returns,
        "raise": fails_with(ValueError, lambda e: str(e) == f"task {token} raised"),
        "raise_unpicklable": fails_with(
            safepool.RemoteError,
            lambda e: e.type_name.endswith("HoldsALock") and "exception.lock" in e.pickling_error,
        ),
        "raise_unrebuildable": fails_with(
            safepool.RemoteError, lambda e: "could not be rebuilt" in e.pickling_error
        ),
        "unpicklable_result": fails_with(
            safepool.PicklingError, lambda e: e.what == "result"
        ),
        "unpicklable_arg": fails_with(safepool.PicklingError, lambda e: e.what == "args[3]"),
        "arg_exits_on_pickle": fails_with(
            safepool.PicklingError,
            lambda e: e.what == "args[3]" and "SystemExit" in e.reason,
        ),
        "arg_interrupts_on_unpickle": fails_with(
            KeyboardInterrupt, lambda e: str(e) == "raised while unpickling"
        ),
        "result_exits_on_pickle": fails_with(
            GeneratorExit, lambda e: str(e) == "raised while pickling"
        ),
        "result_exits_on_unpickle": fails_with(
            safepool.PicklingError,
            lambda e: e.what == "result" and isinstance(e.__cause__, SystemExit),
        ),
        "raise_reduce_raises": fails_with(
            safepool.RemoteError, lambda e: "CustomBase" in e.pickling_error
        ),
        "raise_rebuild_interrupts": fails_with(
            safepool.RemoteError,
            lambda e: "rebuilt in the parent: KeyboardInterrupt" in e.pickling_error,
        ),
        "segfault": crashed(-signal.SIGSEGV),
        "sigkill": crashed(-signal.SIGKILL),
        "exit0": crashed(0),
        "exit3": crashed(3),
        "timeout": fails_with(safepool.TaskTimeoutError),
        "grandchild_timeout": fails_with(safepool.TaskTimeoutError),
    }
    return checks[kind]


#: Which Stats counter each kind ends in.
COUNTER = {
    "value": "completed",
    "grow": "completed",
    "hook_fails": "completed",
    "raise": "failed",
    "raise_unpicklable": "failed",
    "raise_unrebuildable": "failed",
    "unpicklable_result": "failed",
    "unpicklable_arg": "failed",
    "arg_exits_on_pickle": "failed",
    "arg_interrupts_on_unpickle": "failed",
    "result_exits_on_pickle": "failed",
    "result_exits_on_unpickle": "failed",
    "raise_reduce_raises": "failed",
    "raise_rebuild_interrupts": "failed",
    "segfault": "crashed",
    "sigkill": "crashed",
    "exit0": "crashed",
    "exit3": "crashed",
    "timeout": "timed_out",
    "grandchild_timeout": "timed_out",
}
