"""Choosing the multiprocessing start method, without touching the global one.

safepool never calls ``multiprocessing.get_start_method()`` or
``set_start_method()``: it asks for a context by name, which leaves the
process-wide default unset for the application and for other libraries.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext

__all__ = [
    "default_start_method",
    "keep_global_start_method_unset",
    "preload_in_forkserver",
    "resolve_context",
]

#: Threads whose names start with this belong to safepool itself.
THREAD_PREFIX = "safepool-"
#: Imported once in the forkserver, so that a new worker starts with them loaded: what a
#: worker runs, and the rest of safepool, which a worker needs as soon as its main module
#: (re-run in every worker by multiprocessing) or a task's module imports ``safepool.Executor``
#: or ``@safepool.task``.
PRELOAD = ("safepool._worker", "safepool._executor")


def default_start_method() -> str:
    """forkserver on Linux and the other POSIX systems that have it; spawn on macOS and Windows."""
    if sys.platform == "darwin" or sys.platform == "win32":
        return "spawn"
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"  # pragma: no cover - POSIX without forkserver


def resolve_context(mp_context: BaseContext | str | None) -> BaseContext:
    """Turn ``mp_context`` (a context, a start-method name or ``None``) into a context.

    Raises:
        ValueError: for a start-method name this platform does not have.
        TypeError: for anything that is neither a context nor a string.
    """
    if mp_context is None:
        return multiprocessing.get_context(default_start_method())
    if isinstance(mp_context, str):
        methods = multiprocessing.get_all_start_methods()
        if mp_context not in methods:
            raise ValueError(
                f"unknown start method {mp_context!r}: this platform has {', '.join(methods)}"
            )
        return multiprocessing.get_context(mp_context)
    # Accept anything context-like (the stdlib's contexts, or e.g. multiprocess's
    # for dill), as the stdlib does: it needs Process and get_start_method.
    if callable(getattr(mp_context, "get_start_method", None)) and hasattr(mp_context, "Process"):
        return mp_context
    raise TypeError(
        "mp_context must be a multiprocessing context (multiprocessing.get_context(...)) "
        f"or a start-method name such as 'forkserver', not {type(mp_context).__name__}"
    )


@contextmanager
def keep_global_start_method_unset() -> Iterator[None]:
    """Undo the stdlib pinning the global start method while a worker starts.

    Starting a spawn or forkserver process calls
    ``multiprocessing.spawn.get_preparation_data()``, which calls
    ``get_start_method()`` and so fixes the process-wide default for good: a
    later ``multiprocessing.set_start_method()`` by the application would then
    raise "context has already been set". If the default was unset before the
    start, it is unset again afterwards.
    """
    default = multiprocessing.context._default_context
    was_unset = default.get_start_method(allow_none=True) is None
    try:
        yield
    finally:
        if was_unset:
            default._actual_context = None  # type: ignore[attr-defined]


def preload_in_forkserver(context: BaseContext) -> None:
    """Have the forkserver import safepool before it forks a worker.

    A worker forked from the forkserver then starts with safepool already
    imported: a few milliseconds instead of a fresh import, which matters for
    recycling (``max_tasks_per_child``) and for replacing a killed worker. The
    modules are added to the forkserver's preload list (the stdlib's
    ``set_forkserver_preload``), keeping what is there (``__main__`` by
    default); it takes effect when the forkserver starts, so it does nothing if
    the application started the forkserver earlier.
    """
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or [])
    missing = [m for m in PRELOAD if m not in modules]
    if missing:
        context.set_forkserver_preload([*modules, *missing])
