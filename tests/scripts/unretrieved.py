"""Leaves a failed future alive at interpreter exit.

usage: unretrieved.py MODE   (MODE: keep | retrieve | off)
"""

import sys
from concurrent.futures import wait

import safepool
from tests import obs_tasks

KEPT = []


def main() -> None:
    mode = sys.argv[1]
    pool = safepool.Executor(1, log_unretrieved=mode != "off")
    future = pool.submit(obs_tasks.fail, "kept until exit")
    wait([future])
    if mode == "retrieve":
        future.exception()
    KEPT.append(future)  # alive at exit: no garbage collection reports it
    print("done", flush=True)


if __name__ == "__main__":
    main()
