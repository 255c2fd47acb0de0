"""Tasks for test_spawn_bootstrap: this module imports only os and sys, so what a worker
has imported is what safepool's start imported."""

import os
import sys

_kept = {}


def loaded(names):
    """Which of ``names`` this process has imported."""
    return {name: name in sys.modules for name in names}


def environment():
    """What a spawned child inherits from its parent (compared against the stdlib's child)."""
    return {
        "cwd": os.getcwd(),
        "sys.path": list(sys.path),
        "sys.argv": list(sys.argv),
        "stdin": sys.stdin.read(),
        "main": getattr(sys.modules["__main__"], "__name__", None),
    }


def multiprocessing_state():
    """What multiprocessing says of this process, once a task imports it."""
    import multiprocessing
    from multiprocessing import process

    me = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    return {
        "name": me.name,
        "authkey": bytes(me.authkey),
        "daemon": me.daemon,
        "pid": me.pid,
        "identity_depth": len(me._identity),
        "parent_pid": parent.pid if parent is not None else None,
        "parent_alive": parent.is_alive() if parent is not None else None,
        "start_method": multiprocessing.get_start_method(),
        "original_dir": process.ORIGINAL_DIR,
        "inheriting": getattr(me, "_inheriting", False),
    }


def multiprocessing_info(text):
    """Log through multiprocessing's own logger (``multiprocessing.log_to_stderr``)."""
    from multiprocessing import util

    util.info(text)


def log_after_importing_logging(text):
    import logging  # the first import of logging in this worker

    logging.getLogger("obs.spawn").warning(text)
    return os.getpid()


def keep(name, value):
    """An initializer: keep ``value`` (a proxy, a queue) for the tasks."""
    _kept[name] = value


def write_to_kept_dict(key):
    _kept["dict"][key] = os.getpid()
    return os.getpid()


def _child_puts(queue, value):
    queue.put(value)


def start_a_child_process():
    """Start a multiprocessing child from the task (spawn), with a Queue and a Lock;
    report what it sent and the worker's own child processes afterwards."""
    import multiprocessing

    import psutil

    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    queue = ctx.Queue()
    with lock:
        child = ctx.Process(target=_child_puts, args=(queue, "from the grandchild"))
        child.start()
        got = queue.get(timeout=60)
        child.join(60)
    queue.close()
    queue.join_thread()
    from multiprocessing import resource_tracker

    leftovers = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    return {
        "got": got,
        "exitcode": child.exitcode,
        "own_tracker_started": resource_tracker._resource_tracker._pid is not None,
        "children_left": leftovers,
    }
