"""An executor on a Dask cluster, waited on until Ctrl-C arrives.

usage: cluster_ctrl_c.py MODE FIFO ADDRESS   (MODE: with | result)
Two tasks start process trees on the cluster and report their pids on FIFO;
more wait queued. The cluster is not in this script's process group: only the
client gets the Ctrl-C, as when the cluster is on other machines.
"""

import sys
import time

import safepool
from tests import tasks


def main() -> None:
    mode, fifo, address = sys.argv[1:4]
    pool = safepool.Executor(cluster=address)
    if mode == "with":
        with pool:
            for _ in range(6):
                pool.submit(tasks.spawn_tree_and_hang, fifo)
            time.sleep(120)  # Ctrl-C in the body
    else:
        futures = [pool.submit(tasks.spawn_tree_and_hang, fifo) for _ in range(6)]
        futures[0].result()


if __name__ == "__main__":
    main()
