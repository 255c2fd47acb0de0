"""The future safepool returns: a ``concurrent.futures.Future`` with two refinements.

* Ctrl-C while waiting on it (``result()``/``exception()``) stops its
  executor: pending futures are cancelled, running tasks stopped and the
  workers ended, and the KeyboardInterrupt then reaches the caller.
* ``cancel()`` of a pending future notifies ``wait``/``as_completed`` at once,
  not only when the executor gets round to dropping it.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from safepool._manager import Pool

__all__ = ["SafeFuture"]

T = TypeVar("T")


class SafeFuture(Future[T]):
    """The future of a task submitted to a [`safepool.Executor`][safepool.Executor]."""

    _safepool: Pool | None = None

    def result(self, timeout: float | None = None) -> T:
        try:
            return super().result(timeout)
        except KeyboardInterrupt as exc:
            self._interrupted(exc)
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except KeyboardInterrupt as exc:
            self._interrupted(exc)
            raise

    def _interrupted(self, exc: KeyboardInterrupt) -> None:
        if exc is self._exception:  # the task itself raised it: that is its outcome
            return
        pool = self._safepool
        if pool is not None:
            pool.interrupt()

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self.notify_cancelled()
        return True

    def notify_cancelled(self) -> None:
        """Move a cancelled future to CANCELLED_AND_NOTIFIED, waking ``wait`` callers."""
        with self._condition:
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()

    def start(self) -> bool:
        """Mark the future running; False if it was cancelled (it must then not run)."""
        with self._condition:
            if self._state == CANCELLED_AND_NOTIFIED:
                return False
            return self.set_running_or_notify_cancel()

