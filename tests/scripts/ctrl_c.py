"""Runs an executor and waits on it in one of several ways until Ctrl-C arrives.

usage: ctrl_c.py MODE FIFO METHOD
  (MODE: with | with-exit | result | map | exit | async-with | async-run)
Two tasks start process trees and report their pids on FIFO; more wait queued.
The async modes run under asyncio.run, which turns Ctrl-C into a cancellation.
"""

import asyncio
import sys
import time

import safepool
from tests import tasks


def main() -> None:
    mode, fifo, method = sys.argv[1:4]
    pool = safepool.Executor(2, method)
    if mode.startswith("async-"):
        asyncio.run(in_asyncio(pool, mode, fifo))
    elif mode == "map":
        for _ in pool.map(tasks.spawn_tree_and_hang, [fifo] * 6):
            pass
    elif mode in ("with", "with-exit"):
        with pool:
            for _ in range(6):
                pool.submit(tasks.spawn_tree_and_hang, fifo)
            if mode == "with":
                time.sleep(120)  # Ctrl-C in the body
        # with-exit: Ctrl-C while __exit__ waits in shutdown(wait=True)
    else:
        futures = [pool.submit(tasks.spawn_tree_and_hang, fifo) for _ in range(6)]
        if mode == "result":
            futures[0].result()
        else:  # "exit": Ctrl-C outside any safepool call; interpreter exit must not drain
            time.sleep(120)


async def in_asyncio(pool: safepool.Executor, mode: str, fifo: str) -> None:
    async with pool:
        if mode == "async-with":  # Ctrl-C while the block awaits something else
            for _ in range(6):
                pool.submit(tasks.spawn_tree_and_hang, fifo)
            await asyncio.sleep(120)
        else:  # "async-run": Ctrl-C while the calls are awaited
            await asyncio.gather(*(pool.run(tasks.spawn_tree_and_hang, fifo) for _ in range(6)))


if __name__ == "__main__":
    main()
