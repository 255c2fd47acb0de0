"""The functions the benchmarked pools run. Module-level, so every start method can pickle them."""

from __future__ import annotations

import os
import time
from typing import Any


def noop(x: int) -> int:
    """The tiny task: all the time it costs is the pool's own overhead."""
    return x


def nap_pid(seconds: float) -> int:
    """Warm-up task: hold a worker briefly so the others get work too; say which worker ran."""
    time.sleep(seconds)
    return os.getpid()


def echo_bytes(data: bytes) -> bytes:
    """The payload task: send the bytes it got straight back (pickled both ways)."""
    return data


def burn(iterations: int) -> int:
    """The CPU task: a fixed amount of pure-Python arithmetic; returns a checksum."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def burn_timed(iterations: int) -> tuple[int, float]:
    """The CPU task as the pools run it: ``burn``'s checksum and the CPU time it took here."""
    t0 = time.thread_time()
    checksum = burn(iterations)
    return checksum, time.thread_time() - t0


def sleep_for(seconds: float) -> float:
    """The timeout task: sleep far longer than its timeout, so only a kill ends it early."""
    time.sleep(seconds)
    return seconds


# The resource of the ``hooks`` workload: every hook does nothing, so what the
# workload measures is what running the hooks around each task costs safepool.


def resource_setup() -> int:
    """Create the resource's value once per worker."""
    return 0


def resource_before(value: int) -> None:
    """Run before every task; does nothing."""


def resource_after(value: int, outcome: Any) -> None:
    """Run after every task; does nothing."""
