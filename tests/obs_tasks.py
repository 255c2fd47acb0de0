"""Task functions for the observability tests (logging bridge, stats, progress, unretrieved).

Module-level so that workers can import them under forkserver and spawn.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("obs.worker")


def log_lines(tag: str, count: int, logger: str = "obs.worker") -> int:
    """Log ``count`` numbered INFO records; return the worker pid."""
    target = logging.getLogger(logger)
    for i in range(count):
        target.info("%s record %d", tag, i)
    return os.getpid()


def log_levels(tag: str) -> int:
    """One record per level on ``obs.worker``."""
    log.debug("%s debug", tag)
    log.info("%s info", tag)
    log.warning("%s warning", tag)
    log.error("%s error secret", tag)
    return os.getpid()


def log_exception(tag: str) -> int:
    try:
        {}["missing"]
    except KeyError:
        log.exception("%s failed", tag)
    return os.getpid()


def log_with_unpicklable_extra(tag: str) -> int:
    log.warning("%s extra", tag, extra={"lock": threading.Lock(), "plain": 7})
    return os.getpid()


def log_from_thread(tag: str, count: int) -> int:
    """Log from several threads at once, racing the main thread's reply."""
    threads = [
        threading.Thread(target=log_lines, args=(f"{tag}-t{t}", count)) for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return os.getpid()


def log_then_crash(tag: str) -> None:
    log.warning("%s before the crash", tag)
    os._exit(7)


def log_then_fail(tag: str) -> None:
    log.warning("%s before the error", tag)
    raise ValueError(tag)


def fail(message: str) -> None:
    raise ValueError(message)


def succeed(value: int) -> int:
    return value


def sleep_then(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def fail_if_odd(n: int) -> int:
    if n % 2:
        raise ValueError(f"odd {n}")
    return n


def hang() -> None:
    while True:
        time.sleep(1)


def crash() -> None:
    os._exit(3)


def grow(megabytes: int) -> int:
    global _ballast
    _ballast = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(_ballast), 4096):
        _ballast[i] = 1
    return os.getpid()


def poison() -> int:
    import safepool

    safepool.poison_worker("test asked for it")
    return os.getpid()


_ballast = bytearray()
