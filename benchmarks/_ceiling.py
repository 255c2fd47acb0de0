"""The raw ceiling: the same tiny pickled calls over plain Pipes, with no pool logic at all.

The parent keeps exactly one message in flight per worker (ping-pong): it
sends ``pickle.dumps((noop, (i,), {}))``, the worker unpickles it, calls it
and sends back the pickled result, and the parent, waiting on every pipe at
once with ``multiprocessing.connection.wait``, unpickles that result and
sends that worker the next call. No futures, no threads, no queues, no
bookkeeping: what a pool adds on top of this is its own overhead.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from benchmarks.tasks import noop

_STOP = b""


def serve(conn: Connection) -> None:
    """Worker loop: unpickle a call, run it, send the pickled result; stop on an empty message."""
    while True:
        message = conn.recv_bytes()
        if message == _STOP:
            return
        fn, args, kwargs = pickle.loads(message)
        conn.send_bytes(pickle.dumps(fn(*args, **kwargs)))


def measure(n: int, workers: int, method: str) -> dict[str, Any]:
    """Time ``n`` round trips of ``noop(i)`` spread over ``workers`` processes.

    The workers are started (with ``method``) and each has answered once before
    the clock starts; stopping them afterwards is timed as the shutdown.
    Returns ``value`` (seconds), ``results`` and ``shutdown_seconds``.
    """
    # Any: typeshed's BaseContext lacks Process, which every concrete context has.
    context: Any = multiprocessing.get_context(method)
    conns: list[Connection] = []
    processes: list[multiprocessing.process.BaseProcess] = []
    for _ in range(workers):
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(target=serve, args=(child_end,), daemon=True)
        process.start()
        child_end.close()
        conns.append(parent_end)
        processes.append(process)
    for conn in conns:  # warm: every worker has run one call
        conn.send_bytes(pickle.dumps((noop, (-1,), {})))
    for conn in conns:
        pickle.loads(conn.recv_bytes())

    results: list[Any] = [None] * n
    index_of: dict[Connection, int] = {}
    dumps, loads = pickle.dumps, pickle.loads
    t0 = time.perf_counter()
    next_i = 0
    for conn in conns[:n]:
        conn.send_bytes(dumps((noop, (next_i,), {})))
        index_of[conn] = next_i
        next_i += 1
    busy = list(index_of)
    while busy:
        for conn in cast("list[Connection]", wait(busy)):
            results[index_of[conn]] = loads(conn.recv_bytes())
            if next_i < n:
                conn.send_bytes(dumps((noop, (next_i,), {})))
                index_of[conn] = next_i
                next_i += 1
            else:
                busy.remove(conn)
    seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    for conn in conns:
        conn.send_bytes(_STOP)
    for process in processes:
        process.join()
    for conn in conns:
        conn.close()
    return {"value": seconds, "results": results, "shutdown_seconds": time.perf_counter() - t1}
