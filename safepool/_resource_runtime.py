"""Running resources inside a worker: setup, the per-task reset hooks, teardown.

Also the two functions tasks call: [`resource()`][safepool.resource] to get
their worker's instance, and [`poison_worker()`][safepool.poison_worker] to
ask for the worker to be recycled after the current task.
"""

from __future__ import annotations

# A worker imports this module whether or not it has resources: what only
# resources need (logging, the declarations, typing) is imported when used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from safepool._resources import Resource

__all__ = ["WorkerResources", "poison_worker", "resource"]

#: The resources of the worker this process is, by name (empty outside workers).
_values: dict[str, Any] = {}
#: Why the current worker was poisoned during the current task, if it was.
_poison: list[str] = []
#: True in a worker process (set by the worker before anything else runs).
_in_worker = False


def enter_worker() -> None:
    """Mark this process as a worker, dropping state a fork may have copied from the parent."""
    global _in_worker
    _in_worker = True
    _poison.clear()
    _values.clear()


def resource(name: str) -> Any:
    """Return this worker's instance of the resource ``name``.

    Call it inside a task (or inside another resource's setup or hooks).

    Raises:
        LookupError: outside a safepool worker, or for a name the executor
            did not declare.
    """
    try:
        return _values[name]
    except KeyError:
        if not _values:
            raise LookupError(
                f"safepool.resource({name!r}) only works inside a task running in a safepool "
                "worker whose executor declares it: Executor(resources=[...])"
            ) from None
        raise LookupError(
            f"this worker has no resource {name!r}; it has: {', '.join(sorted(_values))}"
        ) from None


def poison_worker(reason: str = "poison_worker() was called") -> None:
    """Recycle this worker after the current task; the task's outcome is still delivered.

    Use it when a task or hook finds its worker's state can no longer be trusted
    (a connection in an unknown state, a leaked lock). Outside a worker it does
    nothing.
    """
    if _in_worker:
        _poison.append(reason)


def _log() -> Any:
    import logging

    return logging.getLogger("safepool")


class WorkerResources:
    """The resources of one worker process, set up in dependency order."""

    def __init__(self, resources: tuple[Resource[Any], ...]) -> None:
        self._resources = resources
        self._reverse = tuple(reversed(resources))
        self._finalizers: list[tuple[str, Callable[[], object]]] = []
        self._before = [(r, r.before) for r in resources if r.before is not None]
        self._after = [(r, r.after) for r in self._reverse if r.after is not None]

    def setup(self) -> None:
        """Create every resource; on failure, tear down what was made and re-raise.

        The exception raised carries ``safepool_resource`` naming the resource.
        """
        for res in self._resources:
            try:
                _values[res.name] = self._create(res)
            except BaseException as exc:
                exc.safepool_resource = res.name  # type: ignore[attr-defined]
                self.teardown()
                raise

    def _create(self, res: Resource[Any]) -> Any:
        if res.is_generator:
            steps: Iterator[Any] = iter(res.setup())
            value = next(steps)

            def finish() -> None:
                try:
                    next(steps)
                except StopIteration:
                    return
                raise RuntimeError(f"the setup of resource {res.name!r} yielded more than once")

            self._finalizers.append((res.name, finish))
        else:
            value = res.setup()
            if res.teardown is not None:
                teardown = res.teardown
                self._finalizers.append((res.name, lambda: teardown(value)))
        return value

    def teardown(self) -> None:
        """Release every resource set up so far, in reverse order; log failures."""
        while self._finalizers:
            name, finish = self._finalizers.pop()
            try:
                finish()
            except Exception:
                _log().exception("teardown of safepool resource %r failed", name)
            _values.pop(name, None)

    def before_task(self) -> None:
        """Run the ``before`` hooks; a failing one poisons the worker and fails the task."""
        for res, hook in self._before:
            try:
                hook(_values[res.name])
            except BaseException as exc:
                _poison.append(f"the before hook of resource {res.name!r} failed: {exc!r}")
                raise

    def after_task(self, result: Any = None, exception: BaseException | None = None) -> None:
        """Run every ``after`` hook, in reverse order, with the task's ``Outcome``.

        A failing hook poisons the worker; it never changes the task's outcome.
        """
        from safepool._resources import Outcome

        outcome = Outcome(result=result, exception=exception)
        if exception is not None:
            self.check_poison(exception)
        for res, hook in self._after:
            try:
                hook(_values[res.name], outcome)
            except Exception as exc:
                _log().exception("the after hook of safepool resource %r failed", res.name)
                _poison.append(f"the after hook of resource {res.name!r} failed: {exc!r}")

    def check_poison(self, exc: BaseException) -> None:
        """Poison the worker if ``exc`` is of a type a resource declared in ``poison_on``."""
        for res in self._resources:
            if res.poison_on and isinstance(exc, res.poison_on):
                _poison.append(
                    f"{type(exc).__name__} is in poison_on of resource {res.name!r}: {exc}"
                )
                return


def take_poison() -> str | None:
    """Why the worker was poisoned during the last task, clearing it; None if it was not."""
    if not _poison:
        return None
    reason = "; ".join(_poison) or "poison_worker() was called"
    _poison.clear()
    return reason
