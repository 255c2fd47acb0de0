"""What crosses the pipes between the parent and a worker, and how it is checked.

Parent -> worker: one message per task, the pickled ``(fn, args, kwargs)``
made by ``dumps_call()`` in the thread that called ``submit``; an empty
message asks the worker to exit.

Worker -> parent: one pickled tuple per event, first item the kind:

* ``(READY,)`` once the worker has started and its initializer succeeded;
* ``(OK, result, (rss, poison))`` after a task returned;
* ``(ERR, exc_bytes, type_name, message, traceback_text, (rss, poison))``
  after a task raised; ``exc_bytes`` is pickled separately so the parent can
  fall back to a [`RemoteError`][safepool.RemoteError] if it cannot rebuild
  the exception. ``rss`` is the worker's memory after the task (0 when not
  measured) and ``poison`` why the worker must be recycled, or ``None``;
* ``(INIT_ERR, ..., None)`` when the initializer failed, and
  ``(SETUP_ERR, ..., resource_name)`` when a resource's setup failed.

Every task gets exactly one reply, so a reply that cannot be decoded fails only
that task's future and never desynchronises the pipe.
"""

from __future__ import annotations

import pickle
import traceback
import types
from collections.abc import Callable, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any

from safepool._errors import PicklingError, RemoteError, RemoteTraceback

__all__ = [
    "ERR",
    "EXIT",
    "INIT_ERR",
    "OK",
    "READY",
    "SETUP_ERR",
    "decode_error",
    "dumps_call",
    "encode_error",
    "encode_result",
]

READY, OK, ERR, INIT_ERR, SETUP_ERR = 0, 1, 2, 3, 4
#: The message that asks a worker to run its teardown and exit.
EXIT = b""

_PROTOCOL = pickle.HIGHEST_PROTOCOL
# What pickling raises differs by type and Python version: PicklingError,
# TypeError ("cannot pickle '_thread.lock' object"), AttributeError ("Can't
# pickle local object"), RecursionError, even ValueError. Treat all as "cannot
# be pickled".
_PICKLE_FAILURES = (Exception,)

_WORKER_RESOURCE_HINT = (
    "Objects such as connections, engines, pools, locks, sockets, threads and "
    "clients cannot cross a process boundary: create one in each worker instead, "
    "as a worker resource (Executor(resources=[safepool.Resource(...)]), ready-made "
    "ones in safepool.integrations) that tasks get with safepool.resource(name)"
)


def _dumps(obj: Any) -> bytes:
    return bytes(ForkingPickler.dumps(obj, _PROTOCOL))


def _fn_hint(fn: Any) -> str:
    qualname = getattr(fn, "__qualname__", "")
    if getattr(fn, "__name__", "") == "<lambda>" or "<locals>" in qualname:
        return (
            "Workers import functions by name, so lambdas, nested functions and closures "
            "cannot be sent: define the function at module level"
        )
    if isinstance(fn, types.MethodType):
        return f"The bound method drags its instance along. {_WORKER_RESOURCE_HINT}"
    return _WORKER_RESOURCE_HINT


def _diagnose(fn: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> PicklingError | None:
    """Find which part of a call cannot be pickled; ``None`` if each part can on its own."""
    parts: list[tuple[str, Any]] = [("the function", fn)]
    parts += [(f"args[{i}]", a) for i, a in enumerate(args)]
    parts += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
    for what, obj in parts:
        try:
            _dumps(obj)
        except _PICKLE_FAILURES as exc:
            hint = _fn_hint(obj) if what == "the function" else _WORKER_RESOURCE_HINT
            return PicklingError(what, type(obj).__qualname__, str(exc) or type(exc).__name__, hint)
    return None


def dumps_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """Pickle a call for a worker.

    Raises [`PicklingError`][safepool.PicklingError] naming the culprit.
    """
    try:
        return _dumps((fn, args, kwargs))
    except _PICKLE_FAILURES as exc:
        error = _diagnose(fn, args, kwargs) or PicklingError(
            "the call", type(fn).__qualname__, str(exc) or type(exc).__name__
        )
        raise error from exc


def encode_result(result: Any, trailer: Any) -> bytes:
    """Encode a task's return value; an unpicklable one becomes a PicklingError reply."""
    try:
        return pickle.dumps((OK, result, trailer), _PROTOCOL)
    except _PICKLE_FAILURES as exc:
        error = PicklingError(
            "the result",
            type(result).__qualname__,
            str(exc) or type(exc).__name__,
            "Return plain data (numbers, strings, lists, dicts, dataclasses) from tasks",
        )
        return encode_error(error, trailer, tb_text="")


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def encode_error(
    exc: BaseException, trailer: Any, *, kind: int = ERR, tb_text: str | None = None
) -> bytes:
    """Encode an exception raised in the worker, with its traceback text.

    The exception is pickled and unpickled here first: if either fails, a
    [`RemoteError`][safepool.RemoteError] with the type name, message and traceback
    goes instead, so one odd exception can never break the pool.
    """
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = _type_name(exc)
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        message = f"<{type_name} with unprintable message>"
    try:
        exc_bytes = pickle.dumps(exc, _PROTOCOL)
        pickle.loads(exc_bytes)
    except BaseException:
        exc_bytes = pickle.dumps(RemoteError(type_name, message, tb_text), _PROTOCOL)
    return pickle.dumps((kind, exc_bytes, type_name, message, tb_text, trailer), _PROTOCOL)


def decode_error(
    exc_bytes: bytes, type_name: str, message: str, tb_text: str, pid: int | None
) -> BaseException:
    """Rebuild a worker's exception in the parent, its child traceback as ``__cause__``."""
    exc: BaseException
    try:
        exc = pickle.loads(exc_bytes)
        if not isinstance(exc, BaseException):
            raise TypeError(f"expected an exception, got {type(exc).__name__}")
    except Exception:
        exc = RemoteError(type_name, message, tb_text, pid)
    if isinstance(exc, RemoteError) and exc.pid is None:
        exc.pid = pid
    if tb_text:  # object.__setattr__ also works on frozen dataclass exceptions
        object.__setattr__(exc, "__cause__", RemoteTraceback(tb_text, pid))
    return exc
