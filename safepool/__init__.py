"""safepool: a ``concurrent.futures`` process pool that is safe by default.

Workers start with forkserver/spawn (never fork unless asked), per-task
timeouts stop the task and every process it started, a crashing task fails
only its own future, workers are recycled by task count or memory, Ctrl-C is
quiet, and child exceptions arrive with their child traceback.

    >>> import safepool
    >>> with safepool.Executor(max_workers=2, timeout=10) as pool:  # doctest: +SKIP
    ...     print(list(pool.map(abs, [-1, -2])))
    [1, 2]
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: a worker imports this package, and typing with it
# would add about 10% to every worker's start under spawn.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from safepool._aio import as_completed_async
    from safepool._errors import (
        ForkWarning,
        InitializerError,
        PicklingError,
        PoolStoppedError,
        RemoteError,
        RemoteTraceback,
        ResourceSetupError,
        TaskStoppedError,
        TaskTimeoutError,
        WorkerCrashedError,
    )
    from safepool._executor import Executor, ExecutorView
    from safepool._progress import progress
    from safepool._resource_runtime import poison_worker, resource
    from safepool._resources import Outcome, Resource, worker_resource
    from safepool._stats import Stats, TaskSeconds, WorkerStats
    from safepool._task import TaskFunction, default_executor, task

    ProcessPoolExecutor = Executor

__version__ = "0.1.0.dev0"

# The public names, by the private module that defines each. They are imported
# on first use (PEP 562): a worker process imports ``safepool._worker``, and
# with it this package, without paying for the executor, pebble or tqdm.
_WHERE = {
    "as_completed_async": "_aio",
    "ForkWarning": "_errors",
    "InitializerError": "_errors",
    "PicklingError": "_errors",
    "PoolStoppedError": "_errors",
    "RemoteError": "_errors",
    "RemoteTraceback": "_errors",
    "ResourceSetupError": "_errors",
    "TaskStoppedError": "_errors",
    "TaskTimeoutError": "_errors",
    "WorkerCrashedError": "_errors",
    "Executor": "_executor",
    "ExecutorView": "_executor",
    "progress": "_progress",
    "poison_worker": "_resource_runtime",
    "resource": "_resource_runtime",
    "Outcome": "_resources",
    "Resource": "_resources",
    "worker_resource": "_resources",
    "Stats": "_stats",
    "TaskSeconds": "_stats",
    "WorkerStats": "_stats",
    "TaskFunction": "_task",
    "default_executor": "_task",
    "task": "_task",
}
#: The stdlib's name for the same class, for drop-in use.
_ALIASES = {"ProcessPoolExecutor": "Executor"}


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    module = _WHERE.get(target)
    if module is None:
        raise AttributeError(f"module 'safepool' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"safepool.{module}"), target)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Executor",
    "ExecutorView",
    "ForkWarning",
    "InitializerError",
    "Outcome",
    "PicklingError",
    "PoolStoppedError",
    "ProcessPoolExecutor",
    "RemoteError",
    "RemoteTraceback",
    "Resource",
    "ResourceSetupError",
    "Stats",
    "TaskFunction",
    "TaskSeconds",
    "TaskStoppedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerStats",
    "__version__",
    "as_completed_async",
    "default_executor",
    "poison_worker",
    "progress",
    "resource",
    "task",
    "worker_resource",
]
