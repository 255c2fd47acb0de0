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


#: How many SlowToPickle were pickled, in order, and how many of them when each
#: future given to ``note_when_done`` ended.
SLOW_PICKLED: list[int] = []
PICKLED_WHEN_DONE: list[int] = []


class SlowToPickle:
    """Takes ``SECONDS`` to pickle (its ``__reduce__`` sleeps), and counts itself."""

    SECONDS = 0.1

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        threading.Event().wait(self.SECONDS)
        SLOW_PICKLED.append(self.value)
        return (_rebuilt, (self.value,))


def note_when_done(_future: Any) -> None:
    PICKLED_WHEN_DONE.append(len(SLOW_PICKLED))


def reduce_late_tripled(obj: LateReduced) -> Any:
    return (_rebuilt, (3 * obj.value,))


class StopsThePoolThenFails:
    """While pickled, has ``pool`` stopped (``kill_workers()``, in ``STOPPER``, a thread
    of its own: it waits for the manager, which is pickling this), then cannot be pickled."""

    pool: Any = None
    STOPPER: list[threading.Thread] = []

    def __reduce__(self) -> Any:
        pool = StopsThePoolThenFails.pool
        if not StopsThePoolThenFails.STOPPER:  # (pickled again to name what fails)
            stopper = threading.Thread(target=pool.kill_workers)
            StopsThePoolThenFails.STOPPER.append(stopper)
            stopper.start()
        while pool._engine._stop_reason is None:
            threading.Event().wait(0.005)
        raise TypeError("stopped the pool")
