"""Progress display for ``map(progress=True)`` and [`safepool.progress()`][safepool.progress].

In ``map`` the bar counts tasks as they *finish* (from done-callbacks), not
as the caller consumes results, so it moves even while ``map`` waits on a slow
first result. ``progress()`` counts each future as it hands it to the loop,
which ``as_completed`` does as they finish. It uses tqdm when it is
installed, and otherwise a plain line on stderr: redrawn in place on a
terminal (at most 10 times a second), or printed as a new line at most every
5 seconds when stderr is a file or a pipe (a CI log).
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import IO, Any, TypeVar

__all__ = ["ProgressBar", "progress"]

T = TypeVar("T")

_UNSET: Any = object()
#: tqdm (optional), imported by the first progress bar: importing it costs tens of ms.
_tqdm_module: Any = _UNSET


def _tqdm() -> Any:
    """The tqdm module, or None if it is not installed."""
    global _tqdm_module
    if _tqdm_module is _UNSET:
        try:
            _tqdm_module = importlib.import_module("tqdm")
        except ImportError:  # pragma: no cover - depends on the environment
            _tqdm_module = None
    return _tqdm_module


def _tqdm_class() -> Any:
    """tqdm without its monitor thread (a thread left running would make a later
    ``mp_context="fork"`` executor warn, and fork from a threaded process)."""
    global _quiet_tqdm
    if _quiet_tqdm is None:
        _quiet_tqdm = type("SafepoolTqdm", (_tqdm().tqdm,), {"monitor_interval": 0})
    return _quiet_tqdm


_quiet_tqdm: Any = None


class ProgressBar:
    """Counts finished tasks and shows them; safe to call from any thread.

    Args:
        total: how many tasks there are, if known.
        desc: a label shown before the count.
        file: where to draw; stderr by default.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str | None = None,
        file: IO[str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.total = total
        self.done = 0
        self.failed = 0
        self._desc = desc or "safepool"
        self._file = file
        self._closed = False
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._tqdm: Any = None
        if _tqdm() is not None:
            self._tqdm = _tqdm_class()(
                total=total, desc=self._desc, unit="task", file=file, dynamic_ncols=True
            )

    def advance(self, n: int = 1, failed: bool = False) -> None:
        """Count ``n`` more finished tasks (``failed``: they raised)."""
        with self._lock:
            if self._closed:
                return
            self.done += n
            self.failed += n if failed else 0
            if self._tqdm is not None:
                if failed:
                    self._tqdm.set_postfix(failed=self.failed, refresh=False)
                self._tqdm.update(n)
            else:
                self._draw(final=False)
            finished = self.total is not None and self.done >= self.total
        if finished:
            self.close()

    def on_done(self, future: Future[Any], n: int = 1) -> None:
        """A done-callback: count ``future`` as finished."""
        self.advance(n, _failed(future))

    def close(self) -> None:
        """Draw the final state and stop; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._tqdm is not None:
                self._tqdm.close()
            else:
                self._draw(final=True)

    # --------------------------------------------------------------- plain bar

    def _out(self) -> IO[str]:
        return self._file if self._file is not None else sys.stderr

    def _draw(self, final: bool) -> None:
        out = self._out()
        try:
            tty = out.isatty()
        except (AttributeError, ValueError):
            tty = False
        now = time.monotonic()
        if not final and now - self._last_draw < (0.1 if tty else 5.0):
            return
        self._last_draw = now
        line = self.render(now)
        try:
            out.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
            if final and tty:
                out.write("\n")
            out.flush()
        except (OSError, ValueError):  # a closed stream must not fail the tasks
            pass

    def render(self, now: float | None = None) -> str:
        """The plain progress line, e.g. ``"safepool: 40/100 tasks (2 failed) 8.0/s 0:05"``."""
        elapsed = (now if now is not None else time.monotonic()) - self._started
        total = "?" if self.total is None else str(self.total)
        failed = f" ({self.failed} failed)" if self.failed else ""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        minutes, seconds = divmod(int(elapsed), 60)
        clock = f"{minutes}:{seconds:02d}"
        return f"{self._desc}: {self.done}/{total} tasks{failed} {rate:.1f}/s {clock}"


def _failed(future: Future[Any]) -> bool:
    """Whether ``future`` raised, without counting as retrieving its exception."""
    return not future.cancelled() and getattr(future, "_exception", None) is not None


def progress(
    futures: Iterable[Future[T]],
    *,
    total: int | None = None,
    desc: str | None = None,
    file: IO[str] | None = None,
) -> Iterator[Future[T]]:
    """Yield ``futures`` as they finish, like ``as_completed``, with a progress bar.

    Works with the futures of any executor. The bar is tqdm's if tqdm is
    installed, otherwise a plain line on stderr.

    ```python
    futures = [pool.submit(work, n) for n in range(1000)]
    for future in safepool.progress(futures, desc="work"):
        handle(future.result())
    ```

    Args:
        futures: the futures to wait for (consumed at once).
        total: the count to show; ``len(futures)`` by default.
        desc: a label for the bar.
        file: where to draw the bar; stderr by default.
    """
    pending = list(futures)
    bar = ProgressBar(total if total is not None else len(pending), desc, file)
    try:
        for future in as_completed(pending):
            bar.advance(1, _failed(future))
            yield future
    finally:
        bar.close()
