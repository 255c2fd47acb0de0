"""Choosing the multiprocessing start method, without touching the global one.

safepool never calls ``multiprocessing.get_start_method()`` or
``set_start_method()``: it asks for a context by name, which leaves the
process-wide default unset for the application and for other libraries.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

# multiprocessing is imported where it is used: a worker imports this module (for
# THREAD_PREFIX, through the logging bridge) and, started by safepool's own spawn,
# should not pay for multiprocessing it may never use (``_spawnchild``).
TYPE_CHECKING = False  # not typing's, for the same reason
if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

__all__ = [
    "default_start_method",
    "keep_global_start_method_unset",
    "preload_in_forkserver",
    "resolve_context",
]

#: Threads whose names start with this belong to safepool itself.
THREAD_PREFIX = "safepool-"
#: What a worker runs: imported once in the forkserver, so a new worker starts with it loaded.
WORKER_MODULE = "safepool._worker"
#: The logging bridge, and logging: a worker imports them only if a task logs (see
#: ``_worker``). A forkserver loads them once for all the workers it forks when the
#: main module imports ``logging`` (so every worker would import it anyway).
BRIDGE_MODULE = "safepool._logbridge"
#: The rest of safepool (with pebble and psutil): preloaded too when workers will need it.
EXECUTOR_MODULE = "safepool._executor"
#: What multiprocessing's own bootstrap imports in every child the forkserver forks, and
#: ``typing``, which almost any module a task comes from imports: pure library code, with no
#: threads, sockets or per-process state, so importing it once in the forkserver is safe.
#: Without it each worker imports it again (the stdlib's preload of ``__main__`` does not
#: take effect on 3.10 to 3.13): ``pkgutil`` for ``runpy.run_path`` of a script's main
#: module, ``multiprocessing.popen_forkserver`` to unpickle the ``Process``, ``typing``
#: (with ``pkgutil`` on 3.11 to 3.13). That was about 40% of a recycled worker's CPU on 3.11.
CHILD_IMPORTS = ("multiprocessing.popen_forkserver", "pkgutil", "typing")
#: Modules a worker imports anyway; a main module that uses only these needs no more.
_LIGHT = frozenset({"safepool", "safepool._resource_runtime", "safepool._resources"})
#: 3.15+ (PEP 810): the placeholder a ``lazy import`` binds until first use.
_LAZY_IMPORT: type | None = getattr(types, "LazyImportType", None)
#: What ``from module import name`` binds, as opposed to an object made by running code.
_IMPORTABLE = (type, types.FunctionType, types.BuiltinFunctionType)


def default_start_method() -> str:
    """forkserver on Linux and the other POSIX systems that have it; spawn on macOS and
    Windows, and wherever no temp directory is writable (the forkserver's socket lives in
    one), as Python 3.14+ chooses its own default (gh-155717)."""
    if sys.platform == "darwin" or sys.platform == "win32":
        return "spawn"
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods() and _temp_dir_writable():
        return "forkserver"
    return "spawn"


def _temp_dir_writable() -> bool:
    """Whether a new file can be made in the temp directory multiprocessing would use."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=tempfile.gettempdir()):
            return True
    except OSError:  # no usable temp directory at all, or a read-only one
        return False


def resolve_context(mp_context: BaseContext | str | None) -> BaseContext:
    """Turn ``mp_context`` (a context, a start-method name or ``None``) into a context.

    Raises:
        ValueError: for a start-method name this platform does not have.
        TypeError: for anything that is neither a context nor a string.
    """
    import multiprocessing

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
    from multiprocessing import context

    default = context._default_context
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
    recycling (``max_tasks_per_child``) and for replacing a killed worker; and
    with what every child imports anyway (``CHILD_IMPORTS``). The logging
    bridge (with ``logging``) and the executor side are preloaded only when
    workers will import them anyway: otherwise they would only delay the first
    worker. The modules are added to the forkserver's preload list (the
    stdlib's ``set_forkserver_preload``), keeping what is there (``__main__``
    by default) and, on 3.15+, the application's ``on_error`` choice, which
    each call would otherwise reset. It takes effect when the forkserver
    starts, so it does nothing once the forkserver runs.
    """
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_forkserver_pid", None) is not None:
        return  # started: its preload list is read only at its start
    modules = list(getattr(server, "_preload_modules", None) or [])
    imports = _main_module_imports()
    executor = _workers_need_executor(imports)
    wanted = [WORKER_MODULE]
    if executor or _workers_import_logging(imports):
        wanted.append(BRIDGE_MODULE)
    wanted += CHILD_IMPORTS
    if executor:
        wanted.append(EXECUTOR_MODULE)
    missing = [m for m in wanted if m not in modules]
    if not missing:
        return
    on_error = getattr(server, "_preload_on_error", None)  # 3.15+ (gh-141860)
    if on_error is None:
        context.set_forkserver_preload([*modules, *missing])
    else:
        context.set_forkserver_preload([*modules, *missing], on_error=on_error)  # type: ignore[call-arg]


def _main_module_imports() -> list[tuple[str, bool]]:
    """What the main module's imports bound, which each new worker imports again when
    multiprocessing re-runs the main module in it: ``(module name, is a module)`` for
    each module, and for each class or function (by its ``__module__``).

    Only what an import binds counts: an *instance* in the main module's
    globals, such as the ``pool`` of ``with safepool.Executor() as pool:``, was
    made by code under ``if __name__ == "__main__":``, which a worker does not
    re-run. A package's ``__main__`` is not re-run in workers at all. A 3.15
    ``lazy import`` is skipped without being loaded: looking at it in almost
    any way would import it, and the worker will not import it eagerly either.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if main is None or getattr(spec, "name", "").endswith("__main__"):
        return []
    found: list[tuple[str, bool]] = []
    for value in list(vars(main).values()):
        if _LAZY_IMPORT is not None and type(value) is _LAZY_IMPORT:
            continue
        if isinstance(value, ModuleType):
            found.append((value.__name__, True))
        elif isinstance(value, _IMPORTABLE):
            name = getattr(value, "__module__", None)
            if isinstance(name, str):
                found.append((name, False))
    return found


def _workers_need_executor(imports: list[tuple[str, bool]] | None = None) -> bool:
    """Whether new workers will import the executor side of safepool (and pebble, psutil).

    A worker imports what the main module imported (``imports``, by default
    read now); and a worker that unpickles a ``@safepool.task`` function imports
    its module, which imports the executor. If neither applies, preloading only
    the worker keeps the first worker's start short (the forkserver starts
    before it, and the executor side brings pebble, asyncio and psutil: about
    as long again as the rest of the start).
    """
    if "safepool._task" in sys.modules:
        return True
    for name, is_module in _main_module_imports() if imports is None else imports:
        if name.split(".")[0] == "safepool" and name not in _LIGHT:
            return True
        if name == "safepool" and not is_module:
            return True  # a public class or function (their __module__ is "safepool")
    return False


def _workers_import_logging(imports: list[tuple[str, bool]]) -> bool:
    """Whether the main module's imports bring ``logging`` into every worker anyway."""
    return any(name == "logging" or name.startswith("logging.") for name, _ in imports)
