"""The logging bridge: records logged in workers are handled by the parent's handlers.

Under spawn and forkserver a worker starts with no logging configuration, so
its records would be lost (INFO) or printed raw to stderr (WARNING and up).
Under fork it would write through *copies* of the parent's handlers, whose
locks another parent thread may have held at fork time. The bridge replaces
both with one path::

  worker process                               parent
  --------------                               ------
  any thread: log.info(...)                    manager thread
    root logger's only handler                   recv (LOG, record dict)
    (levels copied from the parent)  ──pipe──>   queue it for "safepool-logs";
    message formatted, exc_info                  a task that logged has its
    as text, pickled, sent under                 future resolved *after* its
    the worker's send lock                       records, through the same queue
                                               thread "safepool-logs"
                                                 logging.getLogger(name).handle(record)
                                                 (the parent's levels, filters, handlers)

Records travel on the worker's own pipe, ahead of the task's reply, so when a
task's future resolves every record the task logged has been handled. The
parent's handlers never run on the manager thread, so a slow handler cannot
delay timeouts or dispatch. No lock is shared between processes: a worker
killed while logging loses at most its own last record.

When OpenTelemetry is in use in the worker and a span is current where a
record is logged (a traced task, see ``_tracing``), the record carries the
span's ids as OpenTelemetry's logging instrumentation names them
(``otelTraceID``, ``otelSpanID``, ``otelTraceSampled``), and the parent
handles it under that span's context.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import sys
import threading

from safepool._context import THREAD_PREFIX
from safepool._transport import LOG, BridgeConfig, message

TYPE_CHECKING = False  # not typing's: a worker imports this module once it logs
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["LogDispatcher", "bridge_config", "install_bridge"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_internal = logging.getLogger("safepool")
#: Loaded means the application uses OpenTelemetry (``_tracing`` is imported only then).
_OTEL_TRACE = "opentelemetry.trace"


def bridge_config(target: logging.Logger | None) -> BridgeConfig:
    """Snapshot the parent's logger levels for a starting worker.

    Copying them lets the worker drop, before pickling, the records the parent
    would drop anyway. The parent checks its levels again when a record
    arrives, so a level changed after the worker started is still respected.
    """
    disable = logging.root.manager.disable
    if target is not None:
        return BridgeConfig(target.getEffectiveLevel(), {}, disable)
    levels: dict[str, int] = {}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return BridgeConfig(logging.root.level, levels, disable)


# ---------------------------------------------------------------- worker side


class _BridgeHandler(logging.Handler):
    """Sends each record to the parent over the worker's pipe."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__(logging.NOTSET)
        self._send = send
        self._pid = os.getpid()
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self._pid:
            # A process the task forked: the pipe is the worker's, not its own.
            return
        try:
            self._send(_encode(record, self._formatter))
        except Exception:
            self.handleError(record)


def _encode(record: logging.LogRecord, formatter: logging.Formatter) -> bytes:
    data = dict(record.__dict__)
    if data.get("processName") == "MainProcess" and "multiprocessing" not in sys.modules:
        # Started by safepool's own spawn: logging asks multiprocessing for the
        # process's name, and multiprocessing is not loaded.
        from safepool._spawnchild import process_name

        data["processName"] = process_name()
    if _OTEL_TRACE in sys.modules:  # the ids of the span it was logged in (see _tracing)
        from safepool._tracing import add_log_fields

        add_log_fields(data)
    data["msg"] = record.getMessage()
    data["args"] = None
    if record.exc_info:
        data["exc_text"] = record.exc_text or formatter.formatException(record.exc_info)
    data["exc_info"] = None
    # BaseException: an ``extra=`` value whose __reduce__ raises even SystemExit
    # must not fail the task that logged it (workers ignore SIGINT, so a
    # KeyboardInterrupt here is the value's too).
    try:
        return message(LOG, pickle.dumps(data, _PROTOCOL))
    except BaseException:
        pass
    for key, value in data.items():  # an ``extra=`` value that cannot be pickled
        try:
            pickle.dumps(value, _PROTOCOL)
        except BaseException:
            data[key] = _safe_repr(value)
    return message(LOG, pickle.dumps(data, _PROTOCOL))


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except BaseException:
        return f"<{type(value).__qualname__} object (unprintable)>"


def install_bridge(send: Callable[[bytes], None], config: BridgeConfig) -> None:
    """Make the worker's root logger forward everything to the parent, and nothing else.

    Handlers already present (inherited through fork, or added by imports)
    are removed and every logger propagates to the root: the parent applies
    its own routing when the record arrives.
    """
    root = logging.getLogger()
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_BridgeHandler(send))
    root.setLevel(config.root_level)
    for name, level in config.levels.items():
        logging.getLogger(name).setLevel(level)
    logging.disable(config.disable)


# ---------------------------------------------------------------- parent side

_RECORD, _CALL, _STOP = 0, 1, 2


class LogDispatcher:
    """Handles forwarded records, and the resolutions queued behind them, in arrival order.

    Only the manager thread calls ``record``, ``call`` and ``close``. The
    handling thread starts on the first record.
    """

    def __init__(self, target: logging.Logger | None) -> None:
        self._target = target
        self._queue: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def record(self, data: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"{THREAD_PREFIX}logs", daemon=True
            )
            self._thread.start()
        self._queue.put((_RECORD, data))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the handling thread once the records queued before it are handled."""
        if self._thread is None:
            fn()
        else:
            self._queue.put((_CALL, fn))

    def close(self, timeout: float) -> None:
        """Handle what is queued and stop the thread.

        If a handler is stuck past ``timeout``, the queued calls (future
        resolutions) run here instead, so no future waits on a log handler
        for ever; the records still queued are then dropped.
        """
        thread = self._thread
        if thread is None:
            return
        self._queue.put((_STOP, None))
        thread.join(timeout)
        if thread.is_alive():
            dropped = 0
            while True:
                try:
                    kind, payload = self._queue.get_nowait()
                except queue.Empty:
                    break
                if kind == _CALL:
                    payload()
                elif kind == _RECORD:
                    dropped += 1
            self._queue.put((_STOP, None))  # for the thread, should its handler return
            _internal.error(
                "a logging handler has been busy for over %gs; %d worker log record(s) "
                "were dropped", timeout, dropped,
            )

    def _run(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == _STOP:
                return
            try:
                if kind == _CALL:
                    payload()
                else:
                    self._handle(payload)
            except BaseException:  # a failing handler or callback must not stop the bridge
                _internal.exception("safepool could not handle a record from a worker")

    def _handle(self, data: dict[str, Any]) -> None:
        record = logging.makeLogRecord(data)
        logger = self._target or logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            if "otelSpanID" in data and _OTEL_TRACE in sys.modules:
                from safepool._tracing import handle_in_context

                # Under the worker's span, for OpenTelemetry log handlers here.
                handle_in_context(logger.handle, record, data)
            else:
                logger.handle(record)
