"""A short tour of what safepool does: ``python -m safepool.demo``.

1. a stuck task is stopped by its timeout (with the process it started);
2. a task that segfaults fails only its own future;
3. a child exception arrives with its child traceback;
4. workers are recycled after N tasks.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
import traceback

import safepool


def stuck() -> None:
    """Start a child process, then hang for ever."""
    subprocess.Popen(["sleep", "300"])
    while True:
        time.sleep(1)


def quick(x: int) -> tuple[int, int]:
    return x, os.getpid()


def crash() -> None:
    ctypes.string_at(0)  # read address 0: SIGSEGV


def parse(text: str) -> int:
    return int(text)


def _say(title: str) -> None:
    print(f"\n== {title}")


def main() -> int:
    print(f"safepool {safepool.__version__} on Python {sys.version.split()[0]}")
    with safepool.Executor(max_workers=2, max_tasks_per_child=3) as pool:
        print(f"2 workers, start method {pool.start_method!r}, recycled every 3 tasks")

        _say("1. a stuck task is stopped by its timeout")
        started = time.monotonic()
        stuck_future = pool.options(timeout=1.0).submit(stuck)
        others = [pool.submit(quick, i) for i in range(4)]
        try:
            stuck_future.result()
        except safepool.TaskTimeoutError as exc:
            print(f"TaskTimeoutError after {time.monotonic() - started:.2f}s: {exc}")
        print("the other tasks were undisturbed:", [f.result()[0] for f in others])

        _say("2. a crashing task fails only its own future")
        crashed = pool.submit(crash)
        fine = pool.submit(quick, 42)
        try:
            crashed.result()
        except safepool.WorkerCrashedError as exc:
            print(f"WorkerCrashedError: {exc}")
        print("its neighbour still got its result:", fine.result()[0])

        _say("3. a child exception arrives with its child traceback")
        try:
            pool.submit(parse, "forty-two").result()
        except ValueError as exc:
            print("".join(traceback.format_exception(exc)).rstrip())

        _say("4. workers are recycled after 3 tasks each")
        pids = [f.result()[1] for f in [pool.submit(quick, i) for i in range(9)]]
        print("pids of 9 tasks:", pids)
        print(f"{len(set(pids))} different worker processes served them")
    print("\nshut down: no worker or child process is left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
