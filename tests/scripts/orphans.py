"""Keeps one busy worker (with a process tree) and two idle ones, then waits to be SIGKILLed.

usage: orphans.py FIFO METHOD
"""

import sys
import time

import safepool
from tests import tasks

if __name__ == "__main__":
    fifo, method = sys.argv[1:3]
    pool = safepool.Executor(3, method)
    idle = set(pool.map(tasks.pid_after, [0.5] * 3))
    tasks.notify(fifo, " ".join(map(str, sorted(idle))))
    pool.submit(tasks.spawn_tree_and_hang, fifo)
    time.sleep(120)
