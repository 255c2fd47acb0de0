"""@safepool.task on functions of a __main__ script, under a given start method.

usage: main_task.py METHOD OUTFILE
"""

import os
import sys

import safepool


@safepool.task(timeout=20)
def square(x):
    return x * x


@safepool.task
def write_later(path, text):
    with open(path, "w") as f:
        f.write(text)
    return os.getpid()


if __name__ == "__main__":
    method, outfile = sys.argv[1:3]
    assert safepool._task._default is None  # created lazily
    with safepool.Executor(2, method) as pool:
        results = [square.__wrapped__(3), pool.submit(square, 4).result()]
        print(*results, list(pool.map(square, [5, 6])))
    print(square(7).result(), safepool.default_executor().start_method)
    # Not awaited: interpreter exit finishes the default executor's work, as the stdlib does.
    write_later(outfile, "written at exit")
