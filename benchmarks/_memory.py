"""Memory of this process and of every process under it: the pool's workers and its helpers.

RSS counts every page a process has resident, shared ones included (summing
the workers' RSS counts the pages they share with each other and with the
forkserver more than once); USS counts only the pages no other process has,
so summing USS is what the processes cost together at the least.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psutil


def _helper_name(process: psutil.Process) -> str:
    """What a non-worker process is, from its command line."""
    try:
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    for needle, name in (
        ("forkserver", "forkserver"),
        ("loky.backend.resource_tracker", "loky resource tracker"),
        ("resource_tracker", "resource tracker"),
        ("semaphore_tracker", "semaphore tracker"),
    ):
        if needle in cmdline:
            return name
    return process.name()


def _memory(process: psutil.Process) -> tuple[int, int] | None:
    """(RSS, USS) in bytes, or None if the process is gone or a zombie."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        info = process.memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return info.rss, info.uss


def snapshot(worker_pids: Collection[int]) -> dict[str, Any]:
    """This process's RSS/USS, its workers' summed RSS/USS, and every other descendant.

    ``worker_pids`` are the processes that ran tasks; any other live
    descendant (a forkserver, a resource tracker, a manager process) is a
    helper, listed with its own RSS and USS.
    """
    me = psutil.Process()
    parent = _memory(me)
    assert parent is not None
    workers_rss = workers_uss = workers_seen = 0
    helpers: list[dict[str, Any]] = []
    for child in me.children(recursive=True):
        memory = _memory(child)
        if memory is None:
            continue
        rss, uss = memory
        if child.pid in worker_pids:
            workers_rss += rss
            workers_uss += uss
            workers_seen += 1
        else:
            helpers.append({"name": _helper_name(child), "pid": child.pid, "rss": rss, "uss": uss})
    helpers_uss = sum(h["uss"] for h in helpers)
    return {
        "parent_rss": parent[0],
        "parent_uss": parent[1],
        "workers": workers_seen,
        "workers_rss": workers_rss,
        "workers_uss": workers_uss,
        "helpers": helpers,
        "helpers_uss": helpers_uss,
        "total_uss": parent[1] + workers_uss + helpers_uss,
    }
