"""The one place safepool touches pebble.

safepool takes from pebble what is sound on its own: starting a worker process
in a given multiprocessing context (``launch_process``), and its public error
types, so code that catches ``pebble.ProcessExpired`` keeps working. pebble's
``ProcessPool`` dispatch (one shared pipe guarded by process-shared locks,
0.1 s polling, blocking kills) is *not* used; ``docs/design.md`` records why.
Nothing else in safepool imports pebble, so its internal shapes can change
without touching the rest of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from pebble import ProcessExpired
from pebble.common.process import launch_process
from pebble.common.types import RemoteTraceback as PebbleRemoteTraceback

__all__ = ["PebbleRemoteTraceback", "ProcessExpired", "start_process"]


def start_process(
    context: BaseContext, name: str, target: Callable[..., Any], *args: Any
) -> BaseProcess:
    """Start ``target(*args)`` in a new non-daemon process of ``context``.

    Workers are not daemonic, so a task may start its own multiprocessing
    children (a daemonic worker could not).
    """
    process: BaseProcess = launch_process(name, target, False, context, *args)
    return process
