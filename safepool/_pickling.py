"""Finding what in an object graph cannot be pickled, and saying what to do about it.

Only used once pickling has already failed. [`find_unpicklable()`][] walks
down from the object that failed, along the same children the pickler would
visit (container items, instance state, reduce arguments), into the first
child that fails to pickle on its own, until it reaches an object none of
whose children fails: that is the culprit, named by its path from the root,
e.g. ``args[0].engine.pool._creator_arg``. [`hint_for()`][] says what to do.

The walk is bounded: cycles are skipped, it goes at most ``MAX_DEPTH`` levels
down and pickles at most ``MAX_PICKLES`` objects, and a long container is
searched by halves, so diagnosing a huge argument costs a few pickles of it,
not one per item.
"""

from __future__ import annotations

import copyreg
import functools
import io
import pickle
import re
import reprlib
import select
import selectors
import socket
import ssl
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_PICKLES",
    "Culprit",
    "crosses_only_at_start",
    "describe",
    "find_unpicklable",
    "forking_dumps",
    "hint_for",
    "plain_dumps",
    "type_name",
]

PROTOCOL = pickle.HIGHEST_PROTOCOL
#: How many levels below the root the search goes at most.
MAX_DEPTH = 40
#: How many objects (or groups of siblings) the search pickles at most.
MAX_PICKLES = 500
#: Siblings are tried one by one below this many; above, by halves.
_LINEAR = 8

Dumps = Callable[[Any], object]


@dataclass(frozen=True)
class Culprit:
    """The innermost object that cannot be pickled, and how it was reached.

    Attributes:
        path: how to reach it from the root, e.g. ``args[0].engine.pool._lock``.
        obj: the object itself.
        type_name: its qualified type name, e.g. ``_thread.lock``.
        reason: the text of the error pickling it raised.
        error: that error.
        chain: ``(path, object)`` for every object from the root down to the culprit.
    """

    path: str
    obj: Any
    type_name: str
    reason: str
    error: BaseException
    chain: tuple[tuple[str, Any], ...]


# ------------------------------------------------------------------ pickling


class _Sink:
    """A file that throws away what it is given: the search needs no bytes."""

    def write(self, data: bytes) -> int:
        return len(data)


def _sent_by_fd(obj: Any) -> tuple[Any, ...]:
    return (int, ())


class _QuietForkingPickler(ForkingPickler):
    """``ForkingPickler`` without its side effects.

    ForkingPickler sends sockets and multiprocessing connections by registering
    a duplicate of their file descriptor with a sharer thread. They do pickle,
    so the search treats them as picklable without registering anything.
    """

    def __init__(self, file: _Sink, protocol: int) -> None:
        super().__init__(file, protocol)
        table = dict(self.dispatch_table)
        for cls in (socket.socket, Connection):
            if cls in table:
                table[cls] = _sent_by_fd
        self.dispatch_table = table


def forking_dumps(obj: Any) -> None:
    """Pickle ``obj`` the way tasks are sent to workers; the bytes are discarded."""
    _QuietForkingPickler(_Sink(), PROTOCOL).dump(obj)


def plain_dumps(obj: Any) -> None:
    """Pickle ``obj`` the way workers send results and exceptions back."""
    pickle.Pickler(_Sink(), PROTOCOL).dump(obj)


# ------------------------------------------------------------------ children


def type_name(obj: Any) -> str:
    """The qualified name of ``obj``'s type: ``_thread.lock``, ``list``, ``pkg.mod.Cls``."""
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def _short(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception:
        return f"<{type_name(value)} object>"


def _attr(name: Any) -> str:
    if isinstance(name, str) and name.isidentifier():
        return f".{name}"
    return f".__dict__[{_short(name)}]"


class _Children:
    """The objects pickling ``obj`` pickles next, each with the path step to it.

    Labels are made only for the child the search goes into, so a container
    of a million items costs no million strings.
    """

    def __init__(self) -> None:
        self.objs: list[Any] = []
        self._segments: list[tuple[int, Callable[[int], str]]] = []

    def add(self, label: str, obj: Any) -> None:
        self.extend((obj,), lambda _i: label)

    def extend(self, objs: Sequence[Any], label: Callable[[int], str]) -> None:
        if objs:
            self._segments.append((len(self.objs), label))
            self.objs.extend(objs)

    def attrs(self, state: dict[Any, Any]) -> None:
        names = list(state)
        self.extend([state[n] for n in names], lambda i: _attr(names[i]))

    def items(self, keys: Sequence[Any], values: Sequence[Any], prefix: str = "") -> None:
        self.extend(values, lambda i: f"{prefix}[{_short(keys[i])}]")
        self.extend(keys, lambda i: f"{prefix}<key {_short(keys[i])}>")

    def label(self, index: int) -> str:
        for start, label in reversed(self._segments):
            if index >= start:
                return label(index - start)
        raise IndexError(index)  # pragma: no cover - the search only asks for its own indexes


def _reduction(obj: Any) -> Any:
    """What the pickler would reduce ``obj`` to (it raises if the object refuses)."""
    cls = type(obj)
    extra: dict[type, Callable[[Any], Any]] = getattr(ForkingPickler, "_extra_reducers", {})
    reducer = extra.get(cls) or copyreg.dispatch_table.get(cls)
    if reducer is not None:
        return reducer(obj)
    return obj.__reduce_ex__(PROTOCOL)


def _children(obj: Any) -> _Children:
    kids = _Children()
    cls = type(obj)
    if cls in (list, tuple):
        kids.extend(obj, lambda i: f"[{i}]")
    elif cls is dict:
        kids.items(list(obj), list(obj.values()))
    elif cls in (set, frozenset):
        members = list(obj)
        kids.extend(members, lambda i: f"<item {_short(members[i])}>")
    elif isinstance(obj, types.MethodType):
        kids.add(".__self__", obj.__self__)
        kids.add(".__func__", obj.__func__)
    elif isinstance(obj, functools.partial):
        kids.add(".func", obj.func)
        kids.extend(obj.args, lambda i: f".args[{i}]")
        kids.items(list(obj.keywords), list(obj.keywords.values()), ".keywords")
        kids.attrs(getattr(obj, "__dict__", None) or {})
    elif isinstance(obj, (types.BuiltinMethodType, types.MethodWrapperType)):
        owner = getattr(obj, "__self__", None)
        if owner is not None and not isinstance(owner, types.ModuleType):
            kids.add(".__self__", owner)
    elif not isinstance(obj, (types.FunctionType, type, types.ModuleType)):
        _reduced_children(kids, obj)
    return kids


def _reduced_children(kids: _Children, obj: Any) -> None:
    reduced = _reduction(obj)
    if not isinstance(reduced, tuple):
        return  # a global name: pickled by reference, nothing inside
    func, args, state, listitems, dictitems = (*reduced, None, None, None, None)[:5]
    args = tuple(args or ())
    if getattr(func, "__name__", "") in ("__newobj__", "__newobj_ex__") and args:
        kids.add(".__class__", args[0])
        args = args[1:]
    elif func is type(obj):
        kids.add(".__class__", func)
        func = None
    fields = getattr(type(obj), "_fields", None)
    if isinstance(obj, BaseException):
        kids.extend(args, lambda i: f".args[{i}]")
    elif isinstance(obj, tuple) and isinstance(fields, tuple) and len(fields) == len(args):
        kids.extend(args, lambda i: _attr(fields[i]))
    else:
        kids.extend(args, lambda i: f".__reduce__args[{i}]")
    if isinstance(state, dict):
        kids.attrs(state)
    elif (
        isinstance(state, tuple) and len(state) == 2
        and isinstance(state[0], (dict, type(None))) and isinstance(state[1], dict)
    ):
        kids.attrs(state[0] or {})
        kids.attrs(state[1])
    elif state is not None:
        kids.add(".__getstate__()", state)
    if listitems is not None:
        kids.extend(list(listitems), lambda i: f"[{i}]")
    if dictitems is not None:
        pairs = list(dictitems)
        kids.items([k for k, _ in pairs], [v for _, v in pairs])
    if func is not None:
        kids.add(".__reduce__func", func)


# ------------------------------------------------------------------ search


def _detached(exc: BaseException) -> BaseException:
    """``exc`` without tracebacks, whose frames would keep the searched objects alive.

    A traceback holds the frame that caught it, which holds the exception: a
    cycle that only the garbage collector frees, keeping (say) a multiprocessing
    Queue's semaphores and pipes open until then.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


class _Search:
    def __init__(self, dumps: Dumps, max_pickles: int, max_depth: int) -> None:
        self._dumps = dumps
        self.left = max_pickles
        self._max_depth = max_depth
        self._chain: list[tuple[str, Any]] = []
        self._on_chain: set[int] = set()
        self._dead: set[int] = set()
        self._keep: list[Any] = []  # keeps the ids in _dead from being reused

    def fails(self, obj: Any) -> BaseException | None:
        self.left -= 1
        try:
            self._dumps(obj)
        except BaseException as exc:  # SystemExit from a __reduce__ is a failure to pickle too
            if may_be_ctrl_c(exc):
                raise  # never swallowed
            return _detached(exc)
        return None

    def culprit(self, obj: Any, path: str, error: BaseException) -> Culprit:
        reason = reason_of(error)
        return Culprit(path, obj, type_name(obj), reason, error, tuple(self._chain))

    def descend(self, obj: Any, path: str, error: BaseException, depth: int) -> Culprit | None:
        """The culprit inside ``obj`` (which fails), or ``None`` if ``obj`` fails only
        because it leads back to an object above it."""
        self._chain.append((path, obj))
        self._on_chain.add(id(obj))
        try:
            if depth >= self._max_depth or self.left <= 0:
                return self.culprit(obj, path, error)
            try:
                kids = _children(obj)
            except BaseException as exc:  # its own __reduce_ex__ refuses: this is it
                if may_be_ctrl_c(exc):
                    raise
                return self.culprit(obj, path, error)
            avoid = self._on_chain | self._dead
            blocked = avoid.intersection(map(id, kids.objs))
            candidates: Sequence[int] = range(len(kids.objs))
            if blocked:
                candidates = [i for i, k in enumerate(kids.objs) if id(k) not in blocked]
            start = 0
            while (found := self._first_failing(kids.objs, candidates, start)) is not None:
                position, child_error = found
                index = candidates[position]
                child = kids.objs[index]
                inner = self.descend(child, path + kids.label(index), child_error, depth + 1)
                if inner is not None:
                    return inner
                self._dead.add(id(child))
                self._keep.append(child)
                blocked.add(id(child))
                start = position + 1
            if blocked and self.left > 0:
                return None  # it fails through a cycle back to an ancestor
            return self.culprit(obj, path, error)
        finally:
            self._chain.pop()
            self._on_chain.discard(id(obj))

    def _first_failing(
        self, objs: list[Any], candidates: Sequence[int], start: int
    ) -> tuple[int, BaseException] | None:
        """The first position from ``start`` whose object fails alone, with its error."""
        while start < len(candidates) and self.left > 0:
            lo, hi = start, len(candidates)
            while hi - lo > _LINEAR and self.left > 0:
                mid = (lo + hi) // 2
                if isinstance(candidates, range):
                    group = objs[lo:mid]
                else:
                    group = [objs[i] for i in candidates[lo:mid]]
                if self.fails(group) is None:
                    lo = mid
                else:
                    hi = mid
            for position in range(lo, hi):
                if self.left <= 0:
                    return None
                error = self.fails(objs[candidates[position]])
                if error is not None:
                    return position, error
            start = hi
        return None


def find_unpicklable(
    obj: Any,
    root: str,
    dumps: Dumps = forking_dumps,
    *,
    max_pickles: int = MAX_PICKLES,
    max_depth: int = MAX_DEPTH,
) -> Culprit | None:
    """The innermost part of ``obj`` that cannot be pickled; ``None`` if ``obj`` pickles.

    Args:
        obj: the object to check.
        root: how to name ``obj`` in paths, e.g. ``"args[0]"``.
        dumps: pickles an object or raises; the default pickles as tasks are sent.
        max_pickles: the most objects the search pickles (then it stops where it got).
        max_depth: the most levels below ``obj`` it goes.

    Never raises an exception of its own but ``KeyboardInterrupt``: if the search
    itself fails, ``obj`` is the culprit.
    """
    search = _Search(dumps, max_pickles, max_depth)
    error = search.fails(obj)
    if error is None:
        return None
    try:
        found = search.descend(obj, root, error, 0)
    except BaseException as exc:
        if may_be_ctrl_c(exc):
            raise
        found = None
    return found or Culprit(root, obj, type_name(obj), reason_of(error), error, ((root, obj),))


def may_be_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` may be a real Ctrl-C, which pickling must let through, not turn
    into a pickling error: a ``KeyboardInterrupt`` in the main thread, the only one
    Python delivers signals to. Elsewhere (the manager thread pickling ``map``'s
    calls) it can only come from user code, and is a failure to pickle like any other.
    """
    main = threading.current_thread() is threading.main_thread()
    return main and isinstance(exc, KeyboardInterrupt)


def reason_of(error: BaseException) -> str:
    """Why pickling failed, in words: the error's message, or its type if it has none.

    An error that is not an ``Exception`` (``SystemExit`` raised by a
    ``__reduce__``, say) is named with its type, since its message alone (``1``)
    says nothing.
    """
    text = str(error)
    if not isinstance(error, Exception):
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text or type(error).__name__


def describe(culprit: Culprit) -> str:
    """``cannot pickle <path> (type <type>): <reason>``."""
    return f"cannot pickle {culprit.path} (type {culprit.type_name}): {culprit.reason}"


# ------------------------------------------------------------------ advice


def crosses_only_at_start(culprit: Culprit) -> bool:
    """A multiprocessing Queue, Lock... that may only reach a worker as it starts."""
    error = culprit.error
    return isinstance(error, RuntimeError) and "through inheritance" in str(error)


def _stdlib_resource_types() -> tuple[type, ...]:
    found: list[type] = [
        type(threading.Lock()), type(threading.RLock()), threading.Condition,
        threading.Event, threading.Semaphore, threading.Barrier, threading.Thread,
        socket.socket, ssl.SSLSocket, ssl.SSLObject, selectors.BaseSelector,
        io.IOBase, Connection,
    ]
    for name in ("epoll", "kqueue", "devpoll"):
        cls = getattr(select, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


_RESOURCE_TYPES = _stdlib_resource_types()
_RESOURCE_WORDS = frozenset(
    {"connection", "engine", "pool", "client", "session", "socket", "lock", "thread",
     "cursor", "producer", "consumer", "poll", "selector"}
)
#: Libraries whose objects on a failing path are connections or clients whatever their names.
_CLIENT_LIBRARIES = frozenset(
    {"redis", "confluent_kafka", "kafka", "paho", "psycopg", "psycopg2", "psycopg_pool",
     "pymysql", "MySQLdb", "pika", "pymongo"}
)
_INTEGRATIONS = {
    "sqlalchemy": ("SQLAlchemy", "safepool.integrations.sqlalchemy.database(name, url)"),
    "psycopg": ("psycopg", "safepool.integrations.psycopg.pool(name, conninfo)"),
    "psycopg_pool": ("psycopg", "safepool.integrations.psycopg.pool(name, conninfo)"),
    "psycopg2": ("psycopg2", "safepool.integrations.psycopg2.pool(name, dsn)"),
    "confluent_kafka": ("Kafka", "safepool.integrations.kafka.producer(name, config)"),
    "paho": ("MQTT", "safepool.integrations.mqtt.client(name, host, port)"),
}
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")


def _words(name: str) -> set[str]:
    words = {w.lower() for w in _WORD.findall(name)}
    return words | {w[:-1] for w in words if w.endswith("s")}


def _library(cls: type) -> str:
    return str(getattr(cls, "__module__", None) or "").split(".", 1)[0]


def _is_resource(obj: Any) -> bool:
    """A connection, engine, pool, lock, socket, thread, client...: made per process."""
    if isinstance(obj, _RESOURCE_TYPES):
        return True
    cls = type(obj)
    if _library(cls) in _CLIENT_LIBRARIES and not isinstance(obj, BaseException):
        return True
    if type_name(obj) in ("select.poll", "select.devpoll"):
        return True
    return any(
        _words(base.__name__) & _RESOURCE_WORDS for base in cls.__mro__ if base is not object
    )


_RESOURCE_TEXT = (
    "connections, engines, pools, locks, sockets, open files, threads and clients cannot "
    "cross a process boundary"
)
_DECLARE = (
    "create one in each worker instead: declare it as a worker resource "
    "(Executor(resources=[safepool.Resource(...)])) that tasks get with "
    "safepool.resource(name)"
)
_PLAIN_DATA = "numbers, strings, bytes, lists, dicts, dataclasses of those"


def _local_definition(culprit: Culprit) -> str | None:
    obj = culprit.obj
    if isinstance(obj, types.FunctionType):
        if obj.__name__ == "<lambda>":
            return "a lambda"
        if "<locals>" in obj.__qualname__:
            return "a nested function"
        return "a function that cannot be imported by its name"
    if isinstance(obj, type) and "<locals>" in obj.__qualname__:
        return "a class defined inside a function"
    return None


def hint_for(culprit: Culprit, *, returning: bool = False) -> str:
    """What to do about ``culprit``.

    Args:
        culprit: what [`find_unpicklable()`][] found.
        returning: it is (in) a task's result, not something sent to a worker.
    """
    parts: list[str] = []
    chain = culprit.chain
    for i, (path, obj) in enumerate(chain[:-1]):
        if isinstance(obj, types.MethodType) and chain[i + 1][0] == f"{path}.__self__":
            parts.append(
                f"{path} is a bound method, so its instance ({path}.__self__, type "
                f"{type_name(obj.__self__)}) is pickled along with it"
            )
            break
    resource = next(((p, o) for p, o in chain if _is_resource(o)), None)
    if crosses_only_at_start(culprit):
        parts.append(
            f"{culprit.path} is a {culprit.type_name}, which multiprocessing gives a worker "
            "only when the worker starts: pass it in the Executor's initargs (the initializer "
            "keeps it in a global), or use a multiprocessing.Manager() one, whose proxies can "
            "be sent with each task"
        )
    elif resource is not None:
        path, obj = resource
        text = f"{path} is a {type_name(obj)}: {_RESOURCE_TEXT}"
        if returning:
            parts.append(f"{text}; return plain data taken from it instead ({_PLAIN_DATA})")
        else:
            library = next(
                (_INTEGRATIONS[_library(type(o))] for _, o in chain
                 if _library(type(o)) in _INTEGRATIONS), None,
            )
            if library is not None:
                ready = f"for {library[0]} there is a ready-made one: {library[1]}"
            else:
                ready = "ready-made ones are in safepool.integrations"
            parts.append(f"{text}, so {_DECLARE}; {ready}")
    elif (local := _local_definition(culprit)) is not None:
        what = "class" if isinstance(culprit.obj, type) else "function"
        parts.append(
            f"{culprit.path} is {local}: workers import functions and classes by name, so "
            f"lambdas, nested functions and closures cannot be sent: define the {what} at "
            "module level"
        )
    elif isinstance(
        culprit.obj, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)
    ):
        kind = type(culprit.obj).__name__
        parts.append(
            f"{culprit.path} is a {kind}, which cannot be pickled: pass plain data instead, "
            "e.g. a list of what it yields, or the arguments that make it"
        )
    elif isinstance(culprit.error, RecursionError):
        parts.append(
            "the object graph is nested too deeply for pickle (a long linked list, a deep "
            "tree): send it flattened"
        )
    elif returning:
        parts.append(f"Return plain data ({_PLAIN_DATA}) from tasks")
    elif parts:
        parts.append("send a module-level function and the plain data it needs instead")
    else:
        parts.append(
            f"Send plain data ({_PLAIN_DATA}) and build other objects inside the task; "
            f"something each worker needs, such as a client, can be a worker resource "
            "(Executor(resources=[safepool.Resource(...)])) that tasks get with "
            "safepool.resource(name)"
        )
    return ". ".join(parts)
