"""Objects that raise while they are pickled or rebuilt, and tasks that send them.

Each raises the exception *type* it is given, which may be a BaseException that is not
an Exception (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``, ``CustomBase``):
the pool must fail only the one future involved, whichever side raises it.
Module-level so that workers import it under forkserver and spawn.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn


class CustomBase(BaseException):
    """A BaseException of the application's own, not an Exception."""


#: What the tests throw at the pool, by name (the names appear in test ids).
BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CustomBase": CustomBase,
}


def _raise(error: type[BaseException], where: str) -> NoReturn:
    raise error(f"raised while {where}")


class RaisesOnPickle:
    """Raises ``error`` when it is pickled."""

    def __init__(self, error: type[BaseException]) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        _raise(self.error, "pickling")


def _rebuild(error: type[BaseException], made_in: int) -> RaisesWhenRebuiltElsewhere:
    if os.getpid() != made_in:
        _raise(error, "unpickling")
    return RaisesWhenRebuiltElsewhere(error, made_in)


class RaisesWhenRebuiltElsewhere:
    """Pickles, but raises ``error`` when it is rebuilt in another process than the one
    that made it (so a worker's own round-trip check of what it sends passes)."""

    def __init__(self, error: type[BaseException], made_in: int | None = None) -> None:
        self.error = error
        self.made_in = os.getpid() if made_in is None else made_in

    def __reduce__(self) -> Any:
        return (_rebuild, (self.error, self.made_in))


class ReduceRaises(Exception):
    """An exception whose ``__reduce__`` raises ``error``: it cannot be sent as itself."""

    def __init__(self, error: type[BaseException]) -> None:
        super().__init__("an exception that cannot be pickled")
        self.error = error

    def __reduce__(self) -> Any:
        _raise(self.error, "pickling an exception")


def _rebuild_exception(error: type[BaseException], made_in: int) -> RebuildRaises:
    if os.getpid() != made_in:
        _raise(error, "unpickling an exception")
    return RebuildRaises(error, made_in)


class RebuildRaises(Exception):
    """An exception that raises ``error`` when it is rebuilt in another process."""

    def __init__(self, error: type[BaseException], made_in: int | None = None) -> None:
        super().__init__("an exception that cannot be rebuilt in the parent")
        self.error = error
        self.made_in = os.getpid() if made_in is None else made_in

    def __reduce__(self) -> Any:
        return (_rebuild_exception, (self.error, self.made_in))


# ------------------------------------------------------------------ tasks


def identity(value: Any) -> Any:
    return value


def return_raising_on_pickle(error: type[BaseException]) -> RaisesOnPickle:
    return RaisesOnPickle(error)


def return_raising_in_parent(error: type[BaseException]) -> RaisesWhenRebuiltElsewhere:
    return RaisesWhenRebuiltElsewhere(error)


def raise_unpicklable(error: type[BaseException]) -> NoReturn:
    raise ReduceRaises(error)


def raise_unrebuildable_in_parent(error: type[BaseException]) -> NoReturn:
    raise RebuildRaises(error)


def pid() -> int:
    return os.getpid()
