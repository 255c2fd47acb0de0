"""Declaring per-worker resources: what a worker sets up once and resets around every task.

A [`Resource`][safepool.Resource] names a value each worker creates once (a
database engine, a connection pool, a client with its own threads), the
teardown that releases it when the worker exits on purpose, and the hooks
that reset it before and after every task. Workers set resources up *eagerly*,
when they start and before they take a task, in dependency order, so a bad
configuration fails the first task rather than some later one.

This module is the declaration side, used in the parent; ``_resource_runtime``
runs them in the workers.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from safepool._validate import check_callable

__all__ = ["Outcome", "Resource", "order_resources", "worker_resource"]

T = TypeVar("T")


#: ``inspect.CO_GENERATOR``: the flag of a generator function's code object.
_CO_GENERATOR = 0x20


def _is_generator_function(fn: Any) -> bool:
    """``inspect.isgeneratorfunction``, without importing ``inspect`` in every worker."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_GENERATOR)


class Outcome:
    """How a task ended, as an ``after`` hook sees it (read-only).

    Attributes:
        result: the task's return value (``None`` if it raised).
        exception: the exception the task raised, or ``None``.
    """

    # A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, which
    # would add milliseconds to every worker's start under spawn.
    __slots__ = ("exception", "result")
    result: Any
    exception: BaseException | None

    def __init__(self, result: Any = None, exception: BaseException | None = None) -> None:
        object.__setattr__(self, "result", result)
        object.__setattr__(self, "exception", exception)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Outcome is read-only: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return (self.result, self.exception) == (other.result, other.exception)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Outcome(result={self.result!r}, exception={self.exception!r})"

    @property
    def ok(self) -> bool:
        """True if the task returned, False if it raised."""
        return self.exception is None


class Resource(Generic[T]):
    """A named value that each worker process creates once and reuses across its tasks.

    Args:
        name: how tasks ask for it: ``safepool.resource(name)``.
        setup: called once in each worker, when it starts, to create the
            value. It may be a generator function that yields the value once
            and runs its teardown after the ``yield`` (like a pytest fixture).
        teardown: ``teardown(value)``, run when the worker exits on purpose
            (recycled by task count, memory or poisoning, or shut down). It is
            skipped when a worker is killed (timeout, crash, SIGKILL).
        before: ``before(value)``, run in the worker before every task: the
            session reset (roll back, check out a fresh session).
        after: ``after(value, outcome)``, run after every task, even when the
            task raised; ``outcome`` is an [`Outcome`][safepool.Outcome].
        depends_on: names of resources this one needs. They are set up first
            (a setup may call ``safepool.resource()`` for them) and torn down
            after it.
        poison_on: exception types that, raised by a task, mean the worker can
            no longer be trusted: it is recycled after that task. (A hook that
            raises anything poisons the worker anyway.) The task's own result
            or exception is still delivered.

    Functions must be importable by the worker (defined at module level)
    unless the executor uses ``fork``.
    """

    def __init__(
        self,
        name: str,
        setup: Callable[[], T] | Callable[[], Iterable[T]],
        *,
        teardown: Callable[[T], object] | None = None,
        before: Callable[[T], object] | None = None,
        after: Callable[[T, Outcome], object] | None = None,
        depends_on: Sequence[str] = (),
        poison_on: Sequence[type[BaseException]] = (),
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a resource name must be an identifier-like string, got {name!r}")
        check_callable(setup, f"setup of resource {name!r}")
        for hook, what in ((teardown, "teardown"), (before, "before"), (after, "after")):
            if hook is not None:
                check_callable(hook, f"{what} of resource {name!r}")
        if _is_generator_function(setup) and teardown is not None:
            raise TypeError(
                f"resource {name!r}: a generator setup runs its own teardown after `yield`; "
                "do not also pass teardown="
            )
        if isinstance(depends_on, str) or not all(isinstance(d, str) for d in depends_on):
            raise TypeError(f"resource {name!r}: depends_on must be a sequence of names")
        for exc_type in poison_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise TypeError(f"resource {name!r}: poison_on must hold exception types")
        self.name = name
        self.setup = setup
        self.teardown = teardown
        self.before = before
        self.after = after
        self.depends_on = tuple(depends_on)
        self.poison_on = tuple(poison_on)
        self._reference: tuple[str, str] | None = None  # set by @worker_resource

    @property
    def is_generator(self) -> bool:
        """True when ``setup`` is a generator function (it yields the value)."""
        return _is_generator_function(self.setup)

    def __repr__(self) -> str:
        return f"<safepool.Resource {self.name!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._reference is not None:  # the decorated function's name now means this object
            return (_lookup, self._reference)
        return (
            _rebuild,
            (self.name, self.setup, self.teardown, self.before, self.after,
             self.depends_on, self.poison_on),
        )


def _rebuild(*fields: Any) -> Resource[Any]:
    name, setup, teardown, before, after, depends_on, poison_on = fields
    return Resource(name, setup, teardown=teardown, before=before, after=after,
                    depends_on=depends_on, poison_on=poison_on)


def _lookup(module: str, qualname: str) -> Resource[Any]:
    obj: Any = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Resource):
        raise TypeError(f"{module}.{qualname} is not a safepool.Resource")
    return obj


def worker_resource(
    name: str | None = None,
    *,
    before: Callable[[Any], object] | None = None,
    after: Callable[[Any, Outcome], object] | None = None,
    depends_on: Sequence[str] = (),
    poison_on: Sequence[type[BaseException]] = (),
) -> Callable[[Callable[[], Any]], Resource[Any]]:
    """Declare a resource from a setup function, usually a generator, at module level.

    ```python
    @safepool.worker_resource("db", after=lambda engine, outcome: None)
    def db():
        engine = sqlalchemy.create_engine(URL)
        yield engine           # the value tasks get from safepool.resource("db")
        engine.dispose()       # teardown, when the worker exits on purpose
    ```

    The decorated name becomes the [`Resource`][safepool.Resource]; pass it in
    ``Executor(resources=[db])``. ``name`` defaults to the function's name.
    """

    def decorate(setup: Callable[[], Any]) -> Resource[Any]:
        qualname = getattr(setup, "__qualname__", "")
        if "<locals>" in qualname:
            raise ValueError(
                f"@safepool.worker_resource needs a module-level function, got {qualname!r}"
            )
        resource: Resource[Any] = Resource(
            name or setup.__name__, setup, before=before, after=after,
            depends_on=depends_on, poison_on=poison_on,
        )
        resource._reference = (setup.__module__, qualname)
        return resource

    return decorate


def order_resources(resources: Iterable[Any], *, check_pickling: bool) -> tuple[Resource[Any], ...]:
    """Validate resources and return them in setup order (dependencies first).

    Raises:
        TypeError: for something that is not a Resource, or a resource that
            cannot be sent to a worker.
        ValueError: for a duplicate name, an unknown dependency or a cycle.
    """
    by_name: dict[str, Resource[Any]] = {}
    for resource in resources:
        if not isinstance(resource, Resource):
            raise TypeError(f"resources must be safepool.Resource objects, got {resource!r}")
        if resource.name in by_name:
            raise ValueError(f"two resources are named {resource.name!r}")
        by_name[resource.name] = resource
    ordered: list[Resource[Any]] = []
    state: dict[str, str] = {}

    def visit(resource: Resource[Any], path: tuple[str, ...]) -> None:
        if state.get(resource.name) == "done":
            return
        if state.get(resource.name) == "visiting":
            cycle = " -> ".join((*path, resource.name))
            raise ValueError(f"resources depend on each other in a cycle: {cycle}")
        state[resource.name] = "visiting"
        for dependency in resource.depends_on:
            if dependency not in by_name:
                raise ValueError(
                    f"resource {resource.name!r} depends on {dependency!r}, which is not "
                    f"declared (declared: {', '.join(sorted(by_name))})"
                )
            visit(by_name[dependency], (*path, resource.name))
        state[resource.name] = "done"
        ordered.append(resource)

    for resource in by_name.values():
        visit(resource, ())
    if check_pickling:
        for resource in ordered:
            _check_picklable(resource)
    return tuple(ordered)


def _check_picklable(resource: Resource[Any]) -> None:
    """Fail at construction, naming the hook, if a worker could not receive ``resource``."""
    from safepool._errors import PicklingError
    from safepool._transport import dumps_call

    if resource._reference is not None:
        return  # sent by name; the worker imports the module that declares it
    hooks = (("setup", resource.setup), ("teardown", resource.teardown),
             ("before", resource.before), ("after", resource.after))
    for what, hook in hooks:
        if hook is None:
            continue
        try:
            dumps_call(hook, (), {})
        except PicklingError as exc:
            raise PicklingError(
                f"the {what} function of resource {resource.name!r}", exc.type_name, exc.reason,
                exc.hint,
            ) from exc


# Public as ``safepool.<name>``: so shown in tracebacks and reprs, and pickled by that name.
for _cls in (Outcome, Resource):
    _cls.__module__ = "safepool"
del _cls
