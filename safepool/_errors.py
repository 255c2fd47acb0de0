"""The exceptions safepool raises, and the warning it gives for ``fork``.

Each one says what went wrong and what to do about it. Where a stdlib or pebble
exception already means the same thing, safepool's exception subclasses it, so
code written for ``concurrent.futures`` or pebble keeps catching it.
"""

from __future__ import annotations

import pickle
import signal
import sys
from concurrent.futures import TimeoutError as _FuturesTimeoutError
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as _StdlibRemoteTraceback

from safepool._pebble import PebbleRemoteTraceback, ProcessExpired

__all__ = [
    "ForkWarning",
    "InitializerError",
    "PicklingError",
    "PoolStoppedError",
    "RemoteError",
    "RemoteTraceback",
    "ResourceSetupError",
    "TaskStoppedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "describe_exitcode",
]

# On 3.10 concurrent.futures.TimeoutError is its own class; from 3.11 on it is
# the builtin. Subclass both so ``except`` clauses written for either match.
if sys.version_info >= (3, 11):
    _TimeoutBase = TimeoutError
else:  # pragma: no cover - Python 3.10

    class _TimeoutBase(_FuturesTimeoutError, TimeoutError):
        pass


class TaskTimeoutError(_TimeoutBase):
    """A task ran longer than its timeout; its worker and process tree were stopped.

    Subclasses the builtin `TimeoutError` (and, on Python 3.10,
    ``concurrent.futures.TimeoutError``).

    Attributes:
        timeout: the timeout in seconds that expired.
        pid: the pid of the worker that ran the task (it has been stopped and replaced).
    """

    def __init__(self, timeout: float, pid: int | None) -> None:
        self.timeout = timeout
        self.pid = pid
        super().__init__(
            f"task exceeded its timeout of {timeout:g}s in worker pid {pid}; "
            "the worker and every process it started were stopped and the worker replaced"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.timeout, self.pid))


def describe_exitcode(exitcode: int | None) -> str:
    """Say in words how a process ended, from its ``Process.exitcode``."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    if exitcode == 0:
        return (
            "exited with code 0 in the middle of the task "
            "(os._exit(0) or a C library calling exit())"
        )
    return f"exited with code {exitcode}"


class WorkerCrashedError(ProcessExpired, BrokenProcessPool):
    """The worker running a task died before the task finished.

    Only this task's future fails; the worker is replaced and the executor stays
    usable. Subclasses `pebble.ProcessExpired` (``.exitcode``, ``.pid``)
    and `concurrent.futures.process.BrokenProcessPool`, so handlers
    written for pebble or the stdlib still catch it.

    Its ``__cause__`` is a [`RemoteTraceback`][safepool.RemoteTraceback] that
    says ``Process <pid> terminated abruptly with exit code <code>``, as Python
    3.15's does, on every version.

    Attributes:
        pid: the pid of the worker that died.
        exitcode: ``Process.exitcode``: negative for a signal (-9 is SIGKILL, as
            from the OOM killer; -11 is SIGSEGV).
        signal: the signal that killed the worker, or ``None`` if it exited.
    """

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        message = (
            f"worker pid {pid} {describe_exitcode(exitcode)} while running this task; "
            "only this task failed and the worker was replaced"
        )
        ProcessExpired.__init__(self, message, code=exitcode, pid=pid)  # type: ignore[no-untyped-call]
        self.signal: signal.Signals | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal = signal.Signals(-exitcode)
            except ValueError:
                self.signal = None
        # As Python 3.15's BrokenProcessPool (gh-139462): the cause names the process.
        ended = "with an unknown exit code" if exitcode is None else f"with exit code {exitcode}"
        if self.signal is not None:
            ended += f" ({self.signal.name})"
        self.__cause__ = RemoteTraceback(f"Process {pid} terminated abruptly {ended}\n", pid)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pid, self.exitcode))


class TaskStoppedError(Exception):
    """A running task was stopped on purpose before it finished.

    This happens when the task is stopped with
    [`stop_task()`][safepool.Executor.stop_task]. When the whole executor is
    stopped (``terminate_workers()``, ``kill_workers()``, Ctrl-C), running
    tasks fail with its subclass [`PoolStoppedError`][safepool.PoolStoppedError].
    """

    def __init__(self, reason: str, pid: int | None = None) -> None:
        self.reason = reason
        self.pid = pid
        super().__init__(f"task stopped in worker pid {pid}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason, self.pid))


class PoolStoppedError(TaskStoppedError, BrokenProcessPool):
    """A task was stopped because the whole executor was stopped.

    This happens when [`terminate_workers()`][safepool.Executor.terminate_workers]
    or [`kill_workers()`][safepool.Executor.kill_workers] is called, or when
    the executor is interrupted (Ctrl-C while a caller waits on it). It
    subclasses [`TaskStoppedError`][safepool.TaskStoppedError] and
    `concurrent.futures.process.BrokenProcessPool`, which is what Python
    3.14's ``terminate_workers()`` and ``kill_workers()`` fail running futures
    with, so ``except`` clauses written for either catch it. Tasks that had not
    started are cancelled instead.
    """


class RemoteTraceback(PebbleRemoteTraceback, _StdlibRemoteTraceback):
    """The traceback of an exception raised in a worker, set as its ``__cause__``.

    Printing the parent-side exception shows this text first, the way
    ``concurrent.futures`` does. It is an instance of both pebble's and the
    stdlib's remote-traceback classes (``.traceback`` and ``.tb`` hold the text).

    Attributes:
        traceback: the formatted child traceback.
        pid: the pid of the worker where the exception was raised.
    """

    def __init__(self, traceback: str, pid: int | None = None) -> None:
        PebbleRemoteTraceback.__init__(self, traceback)  # type: ignore[no-untyped-call]
        self.tb = traceback
        self.pid = pid
        self.args = (traceback, pid)

    def __str__(self) -> str:
        return f'\n"""\nTraceback in worker pid {self.pid}:\n{self.traceback}"""'


class RemoteError(Exception):
    """A child exception that could not be sent to the parent as itself.

    It could not be pickled in the worker (an attribute holding a lock or a
    connection, say), or could not be rebuilt from its pickle (for instance an
    ``__init__`` with required arguments). safepool keeps what it can: the type
    name, the message, the traceback text, and why it could not be sent, which
    ``str()`` shows after the original message:

    ```text
    app.QueryFailed: locked out (safepool could not send the exception itself:
    cannot pickle exception.lock (type _thread.lock): cannot pickle
    '_thread.lock' object)
    ```

    Attributes:
        type_name: the qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback: the child traceback text.
        pid: the worker pid.
        pickling_error: why the exception could not be sent as itself: the path
            to what could not be pickled (``cannot pickle exception.args[0]._lock
            (type _thread.lock): ...``) or ``it could not be rebuilt: TypeError:
            ...``; ``None`` if unknown.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        traceback: str = "",
        pid: int | None = None,
        pickling_error: str | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.pid = pid
        self.pickling_error = pickling_error
        text = f"{type_name}: {message}"
        if pickling_error:
            text += f" (safepool could not send the exception itself: {pickling_error})"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.type_name, self.message, self.traceback, self.pid, self.pickling_error),
        )


class PicklingError(pickle.PicklingError, TypeError):
    """Something that must cross to or from a worker process cannot be pickled.

    Raised by ``submit``/``map`` at the call site for an unpicklable function or
    argument, by ``Executor()`` for unpicklable ``initargs`` (except with
    ``fork``), and set on the future for an unpicklable result. Subclasses both
    `pickle.PicklingError` and `TypeError` (what the stdlib raises).

    The message names the path to the innermost object that cannot be pickled,
    its type, pickle's own reason and what to do, e.g.
    ``cannot pickle args[0].engine.pool._creator_arg (type function): Can't
    pickle local object 'create_engine.<locals>.connect'. args[0].engine is a
    sqlalchemy.engine.base.Engine: ... declare it as a worker resource ...``.

    Attributes:
        what: the path to the object that could not be pickled, rooted at
            ``fn``, ``args[i]``, ``kwargs['name']``, ``initargs[i]`` or
            ``result``: e.g. ``"args[1]"``, ``"kwargs['conn']"``,
            ``"args[0].engine.pool._creator_arg"``, ``"fn.__self__.lock"``,
            ``"result.conn"``.
        type_name: the qualified type of that object, e.g. ``"_thread.lock"``.
        reason: the error pickling it raised.
        hint: what to do about it.
    """

    def __init__(self, what: str, type_name: str, reason: str, hint: str = "") -> None:
        self.what = what
        self.type_name = type_name
        self.reason = reason
        self.hint = hint
        text = f"cannot pickle {what} (type {type_name}): {reason}"
        super().__init__(f"{text}. {hint}" if hint else text)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.what, self.type_name, self.reason, self.hint))


class InitializerError(BrokenProcessPool):
    """A worker's ``initializer`` failed, or workers keep dying while they start.

    As in the stdlib, the executor is then broken: pending futures fail with
    this error and ``submit`` raises it. When the initializer raised, its
    exception is the ``__cause__`` (rebuilt in the parent), and that exception's
    own ``__cause__`` is the child traceback. When workers died while starting
    (a crash, or a main module that cannot be imported), the message says how
    the last one ended and there is no cause.
    """


class ResourceSetupError(Exception):
    """A worker resource's setup failed, so no worker could start to run the task.

    The resource's own exception, rebuilt in the parent with its child
    traceback, is the ``__cause__``. safepool retries starting workers with a
    growing delay (up to ``setup_backoff_max`` seconds); while it waits and no
    worker is running, submitted futures fail at once with this error instead of
    queueing, so callers never hang on a resource that cannot come up.

    Attributes:
        resource: the name of the resource whose setup failed (``None`` when the
            worker did not get ready within ``start_timeout``).
        pid: the worker where it failed.
        retry_in: seconds until safepool tries to start a worker again.
    """

    def __init__(
        self, resource: str | None, pid: int | None, message: str, retry_in: float
    ) -> None:
        self.resource = resource
        self.pid = pid
        self.message = message
        self.retry_in = retry_in
        what = f"resource {resource!r} failed to set up" if resource else "starting failed"
        super().__init__(
            f"{what} in worker pid {pid}: {message}; "
            f"safepool will try to start a worker again in {retry_in:.2g}s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.resource, self.pid, self.message, self.retry_in))


class ForkWarning(RuntimeWarning):
    """Warns, at ``Executor(mp_context="fork")``, about what in the parent will not survive fork.

    Given for live threads (named; a lock one of them holds stays locked in the
    worker) and for well-known fork-unsafe objects alive in the parent:
    SQLAlchemy engines with pooled connections, psycopg2 and psycopg
    connections and pools, confluent-kafka clients and paho-mqtt clients with a
    running loop thread. Each warning names the objects and the fix.
    """


# Public as ``safepool.<name>``: so shown in tracebacks and reprs, and pickled by that name.
for _cls in (ForkWarning, InitializerError, PicklingError, PoolStoppedError, RemoteError,
             RemoteTraceback, ResourceSetupError, TaskStoppedError, TaskTimeoutError,
             WorkerCrashedError):
    _cls.__module__ = "safepool"
del _cls
