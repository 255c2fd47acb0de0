"""A pool whose running task shrugs off SIGTERM, with a long kill_grace: the first Ctrl-C
starts a graceful stop that would take kill_grace (60 s); the second must kill at once.

usage: ctrl_c_twice.py FIFO METHOD
"""

import sys

import safepool
from tests import tasks


def main() -> None:
    fifo, method = sys.argv[1:3]
    pool = safepool.Executor(2, method, kill_grace=60)
    for _ in pool.map(tasks.report_sigterm_and_hang, [fifo] * 3):
        pass


if __name__ == "__main__":
    main()
