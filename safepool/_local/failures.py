"""When workers cannot start, or the manager fails: back off, fail fast, or break the pool.

A failed resource setup or a start timeout backs off (new tasks fail fast
with ``ResourceSetupError`` while no worker runs); a failed initializer, a
worker that cannot be started, or workers dying while starting break the
pool, as in ``concurrent.futures``: it fails what waits and accepts no work.
If the manager thread itself fails, every task fails rather than hang.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from safepool import _transport
from safepool._errors import InitializerError, RemoteError, ResourceSetupError
from safepool._local.deadlines import _WAKE
from safepool._local.state import BUSY, IDLE, RETIRING, PoolState, _set_exception, _Worker
from safepool._proctree import ProcessTree

__all__ = ["Failures"]


def _summary(exc: BaseException) -> str:
    """``Type: message`` of a worker's exception, as the worker saw it."""
    if isinstance(exc, RemoteError):
        return f"{exc.type_name}: {exc.message}"
    return _transport.describe_error(exc)


class Failures(PoolState):
    """The pool's failure part."""

    def _failing_fast(self) -> bool:
        """True while no worker runs and a resource setup failure's backoff lasts."""
        return (
            self._setup_error is not None
            and not any(w.state in (IDLE, BUSY) for w in list(self._workers.values()))
            and time.monotonic() < self._retry_at
        )

    def _on_initializer_error(self, worker: _Worker, cause: BaseException) -> None:
        summary = (
            f"the initializer failed in worker pid {worker.pid} with {_summary(cause)}; "
            "the executor is broken (as in concurrent.futures) and accepts no more work"
        )
        self._break(lambda: InitializerError(summary), cause=cause)
        self._retire(worker)

    def _on_setup_error(
        self, worker: _Worker, name: str | None, cause: BaseException
    ) -> None:
        """A resource failed to set up: fail what waits if no worker can serve it; back off."""
        worker.state = RETIRING  # it exits by itself; not a boot crash
        self._setup_failed(name, worker.pid, _summary(cause).strip(), cause)

    def _on_start_timeout(self, worker: _Worker) -> None:
        """A worker never got ready (a hung initializer or resource setup): kill it, back off."""
        self._kill(worker)
        message = (
            f"the worker did not finish starting within {self._start_timeout:g}s "
            "(its initializer or a resource setup hung); it was killed"
        )
        self._setup_failed(None, worker.pid, message, None)

    def _setup_failed(
        self, name: str | None, pid: int, summary: str, cause: BaseException | None
    ) -> None:
        self._backoff = min(max(0.1, self._backoff * 2), self._backoff_max)
        self._retry_at = time.monotonic() + self._backoff
        self._push_deadline(self._retry_at, _WAKE, None)
        retry_in = self._backoff

        def make() -> BaseException:
            error = ResourceSetupError(name, pid, summary, retry_in)
            error.__cause__ = cause
            return error

        self._setup_error = make
        if not any(w.state in (IDLE, BUSY) for w in self._workers.values()):
            self._fail_waiting(make)

    def _break(
        self, make_error: Callable[[], BaseException], cause: BaseException | None = None
    ) -> None:
        """Refuse further work and fail everything that has not started with a fresh error."""

        def make() -> BaseException:
            error = make_error()
            error.__cause__ = cause
            return error

        with self._lock:
            if self._broken is None:
                self._broken = make
            self._shutdown = True
        self._fail_waiting(make)

    def _fail_waiting(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every task that has not started (queued, or waiting to be re-sent)."""
        with self._lock:
            items = self._take_pending()
        items += self._retry
        self._retry.clear()
        for item in items:
            if item.future.cancelled():
                self._count_cancelled()
            else:
                self._count_failed()
            _set_exception(item.future, make_error())

    def _fail_everything(self, exc: BaseException) -> None:  # pragma: no cover - defensive
        def make() -> BaseException:
            error = RuntimeError(f"safepool's manager thread failed: {exc!r}")
            error.__cause__ = exc
            return error

        with self._lock:
            self._shutdown = True
        self._fail_waiting(make)
        for worker in list(self._workers.values()):
            for item in worker.inflight:
                _set_exception(item.future, make())
            worker.inflight.clear()
            ProcessTree(worker.pid).signal(signal.SIGKILL)
