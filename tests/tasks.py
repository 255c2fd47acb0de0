"""Module-level task functions the tests send to workers (workers import them by name)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

_HOG: list[bytearray] = []
_STATE: dict[str, object] = {}


def add(a, b=0):
    return a + b


def echo_kwargs(*args, **kwargs):
    return args, kwargs


def pid(*_):
    return os.getpid()


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


class Marker:
    """A plain picklable object, to watch with a weak reference."""


def span(seconds):
    """Sleep; when it ran, on the system-wide monotonic clock (comparable across processes)."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def sleep_forever(fifo=None):
    if fifo:
        notify(fifo, f"started {os.getpid()}")
    while True:
        time.sleep(60)


def spin_forever():
    while True:
        pass


def ignore_sigterm_and_hang(fifo):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    notify(fifo, f"started {os.getpid()}")
    while True:
        time.sleep(60)


def notify(fifo, message):
    """Write one line to the test's FIFO (see conftest.Fifo)."""
    with open(fifo, "w") as f:
        f.write(message + "\n")


def note_start_then_sleep(fifo, tag, seconds):
    notify(fifo, f"{tag} {os.getpid()}")
    time.sleep(seconds)
    return tag


def raise_value(message):
    raise ValueError(message)


def raise_system_exit():
    sys.exit(3)


def segfault():
    ctypes.string_at(0)


def exit_with(code):
    os._exit(code)


def kill_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(10)


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt: __init__ requires two arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class HoldsALock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_needs_two_args():
    raise NeedsTwoArgs("left", "right")


def raise_holds_a_lock():
    raise HoldsALock("locked out")


def return_unpicklable():
    return threading.Lock()


def hog(megabytes):
    _HOG.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


def set_state(value):
    _STATE["value"] = value


def get_state(*_):
    return _STATE.get("value"), os.getpid()


def failing_initializer():
    raise RuntimeError("initializer exploded")


def spawn_tree_and_hang(fifo):
    """Start a child, a grandchild (child of a child) and a child in its own session."""
    sleeper = subprocess.Popen(["sleep", "60"])
    detached = subprocess.Popen(["sleep", "60"], start_new_session=True)
    nested = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess,sys,time; p=subprocess.Popen(['sleep','60']); "
         "print(p.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    grandchild = int(nested.stdout.readline())
    pids = [os.getpid(), sleeper.pid, detached.pid, nested.pid, grandchild]
    notify(fifo, " ".join(map(str, pids)))
    while True:
        time.sleep(60)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt("raised by the task")


def put_in_queue(queue):
    queue.put(os.getpid())


def report_sigterm_and_hang(fifo):
    """Ignore SIGTERM but say when it came (a task with slow cleanup)."""

    def on_sigterm(*_):
        notify(fifo, f"sigterm {os.getpid()}")

    signal.signal(signal.SIGTERM, on_sigterm)
    notify(fifo, f"started {os.getpid()}")
    while True:
        time.sleep(60)


def hold_lock(path, seconds):
    """Hold an exclusive lock on ``path`` for ``seconds``; fail if another task holds it."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if two run at once
        time.sleep(seconds)
        fcntl.flock(f, fcntl.LOCK_UN)
    return os.getpid()


def describe_buffers(*args, **kwargs):
    """The type, length and a checksum of each argument (big ones arrive out of band)."""
    import zlib

    def one(value):
        return type(value).__name__, len(value), zlib.crc32(value)

    return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}


def note_start_then_wait_for(fifo, tag, path, seconds=30):
    """Say "<tag> <pid>" on the FIFO, then return once ``path`` exists (or after ``seconds``)."""
    notify(fifo, f"{tag} {os.getpid()}")
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return tag
