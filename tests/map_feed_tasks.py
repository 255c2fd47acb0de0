"""Arguments that watch where and when they are pickled (tests/test_map_feed.py)."""

from __future__ import annotations

import threading
from typing import Any

#: The name of the thread that pickled each PickledWhere, in the parent.
PICKLED_IN: list[str] = []


def _rebuilt(value: int) -> int:
    return value


class PickledWhere:
    """Records the name of the thread that pickles it; arrives in the worker as ``value``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        PICKLED_IN.append(threading.current_thread().name)
        return (_rebuilt, (self.value,))


class SubmitsWhenPickled:
    """Submits ``double(value)`` to ``pool`` while it is being pickled, and keeps the future."""

    pool: Any = None
    submitted: list[Any] = []

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        SubmitsWhenPickled.submitted.append(SubmitsWhenPickled.pool.submit(double, self.value))
        return (_rebuilt, (self.value,))


def double(value: int) -> int:
    return 2 * value


def size(value: bytes | int) -> int:
    return value if isinstance(value, int) else len(value)


class LateReduced:
    """Picklable only through a reducer registered with ``copyreg`` at run time."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        raise TypeError("LateReduced needs its copyreg reducer")


def reduce_late(obj: LateReduced) -> Any:
    return (_rebuilt, (obj.value,))
