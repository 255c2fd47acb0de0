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

from safepool._errors import (
    ForkWarning,
    InitializerError,
    PicklingError,
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
from safepool._stats import Stats, WorkerStats
from safepool._task import TaskFunction, default_executor, task

#: The stdlib's name for the same class, for drop-in use.
ProcessPoolExecutor = Executor

__version__ = "0.1.0.dev0"

# Show the public names in tracebacks and reprs (safepool.TaskTimeoutError, ...).
for _cls in (ForkWarning, InitializerError, PicklingError, RemoteError, RemoteTraceback,
             ResourceSetupError, TaskStoppedError, TaskTimeoutError, WorkerCrashedError,
             Executor, ExecutorView, TaskFunction, Resource, Outcome, Stats, WorkerStats):
    _cls.__module__ = "safepool"
del _cls

__all__ = [
    "Executor",
    "ExecutorView",
    "ForkWarning",
    "InitializerError",
    "Outcome",
    "PicklingError",
    "ProcessPoolExecutor",
    "RemoteError",
    "RemoteTraceback",
    "Resource",
    "ResourceSetupError",
    "Stats",
    "TaskFunction",
    "TaskStoppedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerStats",
    "__version__",
    "default_executor",
    "poison_worker",
    "progress",
    "resource",
    "task",
    "worker_resource",
]
