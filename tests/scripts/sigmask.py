"""Prints the SIGINT state of safepool's manager thread and of the forkserver it started.

usage: sigmask.py METHOD
"""

import sys
import threading

import psutil

import safepool
from tests import tasks


def sigint_blocked(status_path: str) -> bool:
    with open(status_path) as status:
        blocked = next(line for line in status if line.startswith("SigBlk:"))
    return bool(int(blocked.split()[1], 16) & (1 << 1))  # bit 1 is signal 2, SIGINT


if __name__ == "__main__":
    with safepool.Executor(1, sys.argv[1]) as pool:
        pool.submit(tasks.pid).result()
        manager = next(t for t in threading.enumerate() if t.name == "safepool-manager")
        print("manager", sigint_blocked(f"/proc/self/task/{manager.native_id}/status"))
        for child in psutil.Process().children():
            if "forkserver" in " ".join(child.cmdline()):
                print("forkserver", sigint_blocked(f"/proc/{child.pid}/status"))
