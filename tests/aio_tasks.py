"""Task functions for tests/test_asyncio.py (workers import them by name)."""

import os
import time
from pathlib import Path

from tests.tasks import notify


def started_then_mark(fifo, marker, seconds):
    """Say "started <pid>" on the FIFO, then write ``marker`` after ``seconds``."""
    notify(fifo, f"started {os.getpid()}")
    time.sleep(seconds)
    Path(marker).write_text("the task ran on\n")
    return "finished"


def mark(marker):
    Path(marker).write_text("ran\n")
    return os.getpid()


def wait_for_path(path, seconds):
    """Return "seen" once ``path`` exists, or "not seen" after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return "seen"
        time.sleep(0.01)
    return "not seen"


def fail_after(fifo, message):
    notify(fifo, f"failing {os.getpid()}")
    raise ValueError(message)


def dispatch(what):
    """One task of a mixed map: ("fast", _), ("fail", fifo) or ("mark", (fifo, marker))."""
    kind, arg = what
    if kind == "fast":
        return "fast"
    if kind == "fail":
        return fail_after(arg, "first")
    return started_then_mark(arg[0], arg[1], 3)
