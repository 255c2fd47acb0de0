"""``@safepool.task``: a function whose calls run in a worker and return futures.

Why decorated functions usually break under spawn: the decorator rebinds
``module.f`` to the wrapper, so pickling the original function by reference
fails ("not the same object as module.f"). A
[`TaskFunction`][safepool.TaskFunction] instead
pickles as a reference to ``(module, qualname)`` that the worker resolves to
the *original* function: importing the module in the worker re-runs the
decorator, and the lookup unwraps it. That works in a ``__main__`` script (the
worker imports it as ``__mp_main__``), keeps same-named functions of different
modules apart, and lets any executor, even the stdlib's, run the function.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from safepool._executor import Executor
from safepool._validate import check_callable, check_timeout

__all__ = ["TaskFunction", "default_executor", "task"]

P = ParamSpec("P")
R = TypeVar("R")

_default: Executor | None = None
_default_lock = threading.Lock()


def default_executor() -> Executor:
    """The shared executor ``@safepool.task`` functions use when given none.

    It is created on first use with the defaults (one worker per CPU,
    forkserver/spawn) and shut down at interpreter exit, after its work is done.
    """
    global _default
    with _default_lock:
        if _default is None or _default._engine.is_shutdown:
            _default = Executor()
        return _default


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    """Find the original function behind ``module.qualname`` (runs in the worker)."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    while isinstance(obj, TaskFunction):
        obj = obj.__wrapped__
    return obj  # type: ignore[no-any-return]


class TaskFunction(Generic[P, R]):
    """A function decorated with [`safepool.task()`][safepool.task].

    Calling it submits the call and returns a `concurrent.futures.Future`.
    ``__wrapped__`` is the original function; it can also be given to any
    executor's ``submit`` or ``map``, where it runs as the original function.
    """

    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(
        self, fn: Callable[P, R], timeout: float | None, executor: Executor | None
    ) -> None:
        qualname = getattr(fn, "__qualname__", "")
        if "<locals>" in qualname or "<lambda>" in qualname:
            raise ValueError(
                f"@safepool.task needs a module-level function, got {qualname!r}: worker "
                "processes find the function by importing its module"
            )
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.__safepool_timeout__ = timeout
        self._executor = executor

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        executor = self._executor if self._executor is not None else default_executor()
        # Sent as itself: it pickles by reference and runs as the original function.
        return executor.submit(cast("Callable[P, R]", self), *args, **kwargs)

    async def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await the call from a coroutine, as [`Executor.run()`][safepool.Executor.run]:
        cancelling the awaiting task stops the call if it is running."""
        executor = self._executor if self._executor is not None else default_executor()
        return await executor.run(cast("Callable[P, R]", self), *args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_resolve, (self.__module__, self.__qualname__))

    def __repr__(self) -> str:
        return f"<safepool.task {self.__module__}.{self.__qualname__}>"


@overload
def task(fn: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    *, timeout: float | None = None, executor: Executor | None = None
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    timeout: float | None = None,
    executor: Executor | None = None,
) -> TaskFunction[P, R] | Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """Make a module-level function run in a worker process when called.

    Usable bare (``@safepool.task``) or with options:

    ```python
    @safepool.task(timeout=5)
    def render(page): ...

    future = render(3)          # a concurrent.futures.Future
    render.__wrapped__(3)       # the plain function, run here
    ```

    Args:
        timeout: per-task timeout in seconds for every call (see
            [`safepool.Executor`][safepool.Executor]); it also applies when the function is
            given to a safepool executor's ``submit`` or ``map``.
        executor: the executor to run on; by default a shared one
            ([`safepool.default_executor()`][safepool.default_executor]).

    Raises:
        ValueError: for a nested function or lambda, or a bad timeout.
        TypeError: for a non-callable, a bad timeout type or executor.
    """
    seconds = check_timeout(timeout)
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a safepool.Executor, not {type(executor).__name__}")

    def decorate(f: Callable[P, R]) -> TaskFunction[P, R]:
        check_callable(f, "the decorated object")
        return TaskFunction(f, seconds, executor)

    return decorate(fn) if fn is not None else decorate


# Public as ``safepool.<name>``: so shown in tracebacks and reprs, and pickled by that name.
for _cls in (TaskFunction,):
    _cls.__module__ = "safepool"
del _cls
