"""Functions defined in ``__main__`` run on a Dask cluster (no worker can import them).

usage: cluster_main.py ADDRESS; prints the results on one line.
"""

import sys

import safepool


def triple(x):
    return 3 * x


class Box:
    def __init__(self, value):
        self.value = value


def unbox(box):
    return box.value


if __name__ == "__main__":
    with safepool.Executor(cluster=sys.argv[1]) as pool:
        mapped = list(pool.map(triple, range(4)))
        boxed = pool.submit(unbox, Box(7)).result(timeout=60)
        print(mapped, boxed, flush=True)
