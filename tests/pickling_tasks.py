"""Module-level tasks and types for tests/test_pickling_diagnostics.py (workers import them)."""

from __future__ import annotations

import os
import threading


class Box:
    """A plain object with whatever attributes it is given."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


class Slotted:
    __slots__ = ("guard", "name")

    def __init__(self, name, guard):
        self.name = name
        self.guard = guard


class Counter:
    """Its bound methods drag a lock along."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def increment(self):
        with self._lock:
            self.count += 1
            return self.count


class Repository:
    """Holds a SQLAlchemy engine and a connection checked out of it."""

    def __init__(self, engine):
        self.name = "users"
        self.engine = engine
        self.conn = engine.connect()

    def close(self):
        self.conn.close()
        self.engine.dispose()


class CarriesALock(Exception):
    """Raised with an argument that holds a lock: cannot be pickled."""


class NeedsTwo(Exception):
    """Pickles, but cannot be rebuilt: __init__ requires two arguments."""

    def __init__(self, left, right):
        super().__init__(f"{left}+{right}")


def identity(value):
    return value


def add(a, b=0):
    return a + b


def pid():
    return os.getpid()


def return_box_holding_a_lock():
    return Box(rows=[1, 2], conn=Box(_sock=threading.Lock()))


def raise_carrying_a_lock():
    raise CarriesALock(Box(_lock=threading.Lock()), "could not connect")


def raise_needs_two():
    raise NeedsTwo("left", "right")


_kept = []


def keep(*args):
    """An initializer: remember the initargs in this worker."""
    _kept[:] = args


def put_pid_in_kept_queue():
    _kept[0].put(os.getpid())
    return os.getpid()
