"""The functions the benchmarked pools run. Module-level, so every start method can pickle them."""

from __future__ import annotations

import os
import time


def noop(x: int) -> int:
    """The tiny task: all the time it costs is the pool's own overhead."""
    return x


def nap_pid(seconds: float) -> int:
    """Warm-up task: hold a worker briefly so the others get work too; say which worker ran."""
    time.sleep(seconds)
    return os.getpid()
