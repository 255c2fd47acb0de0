"""OpenTelemetry trace context for tasks, used only by an application that uses OpenTelemetry.

Nothing here imports OpenTelemetry at module level, and the executor calls in
only once ``opentelemetry.trace`` is in ``sys.modules`` (the application
imported it, so it is installed and in use): without it, a submit costs one
dict lookup more and nothing is wrapped. Then, if a span is active where
``submit`` (or ``map``, ``options().submit``, a ``@safepool.task`` call) is
called::

  parent process                                 worker process
  --------------                                 --------------
  submitting span (the application's)
  └─ "safepool.task fn": started at submit,      TracedCall unpickled; at run:
     ended by a done-callback with the outcome   extract the carrier, then
     (completed, failed, timed_out, crashed,     └─ "safepool.run fn" (process.pid)
     stopped, cancelled, rejected, split)           └─ the task's own spans
     carrier {"traceparent": ...} ──pickled──>      log records get otelTraceID,
     inside TracedCall(fn, carrier, ...)            otelSpanID, otelTraceSampled

The task span lives in the parent, so its outcome is recorded even when the
worker is killed (timeout, ``stop_task``) or dies: a span that lived only in
the worker could never end then. The worker span records the worker's pid and
whether ``fn`` returned or raised; it is recorded only if the worker has an
OpenTelemetry SDK configured (a [`Resource`][safepool.Resource] is the place).

The call travels as a ``TracedCall`` in place of ``fn`` (same ``args`` and
``kwargs``), so the wire protocol is unchanged, and it works the same on a
Dask cluster's node pools. See docs/tracing.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future

    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, Tracer

    from safepool._transport import Payload

__all__ = [
    "OTEL_TRACE",
    "TaskSpan",
    "TracedCall",
    "add_log_fields",
    "dumps_traced",
    "handle_in_context",
]

#: The module whose presence in ``sys.modules`` means the application uses OpenTelemetry.
OTEL_TRACE = "opentelemetry.trace"

#: Span names: "<prefix> <function's qualified name>".
TASK_SPAN = "safepool.task"
RUN_SPAN = "safepool.run"

# Attribute names (OpenTelemetry semantic conventions where one exists).
OUTCOME = "safepool.task.outcome"
TIMEOUT = "safepool.task.timeout"
CHUNK_SIZE = "safepool.map.chunk_size"
WORKER_PID = "safepool.worker.pid"
PROCESS_PID = "process.pid"
CODE_FUNCTION = "code.function"
CODE_NAMESPACE = "code.namespace"
ERROR_TYPE = "error.type"

#: Log-record attributes, as OpenTelemetry's logging instrumentation names them.
LOG_TRACE_ID = "otelTraceID"
LOG_SPAN_ID = "otelSpanID"
LOG_SAMPLED = "otelTraceSampled"

_tracer: Tracer | None = None
_propagator: TextMapPropagator | None = None
#: ``opentelemetry.trace``, once a submit looked for a span (saves an import per call).
_api: ModuleType | None = None


def _load_api() -> ModuleType:
    global _api
    from opentelemetry import trace

    _api = trace
    return trace


def _get_tracer() -> Tracer:
    """safepool's tracer, from the global tracer provider (a proxy until one is set)."""
    global _tracer
    if _tracer is None:
        from opentelemetry import trace

        from safepool import __version__

        _tracer = trace.get_tracer("safepool", __version__)
    return _tracer


def _get_propagator() -> TextMapPropagator:
    """W3C trace context and baggage: what crosses to the worker, whatever the
    application configured as its global propagator (only safepool reads the carrier)."""
    global _propagator
    if _propagator is None:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = CompositePropagator(
            [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
        )
    return _propagator


def _code_attributes(fn: Any) -> tuple[str, dict[str, Any]]:
    """A span name suffix and ``code.*`` attributes for ``fn``."""
    while isinstance(fn, partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    if not isinstance(name, str):
        name = type(fn).__qualname__
    attributes: dict[str, Any] = {CODE_FUNCTION: name}
    module = getattr(fn, "__module__", None)
    if isinstance(module, str):
        # A worker re-imports the main script as __mp_main__: name it as the parent does.
        attributes[CODE_NAMESPACE] = "__main__" if module == "__mp_main__" else module
    return name, attributes


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _fail(span: Span, exc: BaseException, outcome: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute(OUTCOME, outcome)
    span.set_attribute(ERROR_TYPE, _error_type(exc))
    span.record_exception(exc, escaped=True)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- parent side


class TaskSpan:
    """The parent's "safepool.task" span of one call; ended once, with the call's outcome."""

    __slots__ = ("_ended", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._ended = False

    def follow(self, future: Future[Any]) -> None:
        """End the span when ``future`` resolves (at once if it has)."""
        future.add_done_callback(self._on_done)

    def _on_done(self, future: Future[Any]) -> None:
        if future.cancelled():
            self.end("cancelled")
            return
        # The base class's exception(): SafeFuture's would mark the error as
        # retrieved, and silence its unretrieved-error report.
        from concurrent.futures import Future  # not at the top: workers import this module

        exc = Future.exception(future, 0)
        pid = getattr(future, "_worker_pid", None)  # the worker it was sent to
        if exc is None:
            self.end("completed", pid=pid)
        else:
            self.end(_outcome_of(exc), exc, pid=pid)

    def end(self, outcome: str, exc: BaseException | None = None,
            pid: int | None = None) -> None:
        """End the span with ``outcome`` and, if given, the exception as its error and
        the pid of the worker that ran it."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        if span.is_recording():
            if exc is not None:
                named = getattr(exc, "pid", None)
                if named is None:  # a task's own exception: the worker's traceback has it
                    named = getattr(exc.__cause__, "pid", None)
                if isinstance(named, int) and not isinstance(named, bool):
                    pid = named
            if pid is not None:
                span.set_attribute(WORKER_PID, pid)
            if exc is None:
                span.set_attribute(OUTCOME, outcome)
            else:
                _fail(span, exc, outcome)
        span.end()


def _outcome_of(exc: BaseException) -> str:
    from safepool._errors import TaskStoppedError, TaskTimeoutError, WorkerCrashedError

    if isinstance(exc, TaskTimeoutError):
        return "timed_out"
    if isinstance(exc, WorkerCrashedError):
        return "crashed"
    if isinstance(exc, TaskStoppedError):
        return "stopped"
    return "failed"


def dumps_traced(
    dumps: Callable[[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]], Payload],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    timeout: float | None,
    *,
    named: Any = None,
    chunk_size: int | None = None,
) -> tuple[Payload, TaskSpan | None]:
    """Pickle a call with ``dumps``, traced if a span is active here.

    With no valid current span, this is ``dumps(fn, args, kwargs)`` and no
    span. Otherwise it starts the task span (a child of the current one) and
    pickles a [`TracedCall`][] in place of ``fn``; the caller ends the span
    (``follow`` the future, or ``end`` it if the call is not queued).

    Args:
        dumps: the engine's ``dumps``.
        fn: what the worker calls.
        args: its positional arguments.
        kwargs: its keyword arguments.
        timeout: the call's timeout, recorded on the spans.
        named: the function the spans are named after, if not ``fn`` (a map
            chunk's runner runs the user's function).
        chunk_size: the number of calls in a map chunk.

    Raises:
        safepool.PicklingError: as ``dumps(fn, args, kwargs)`` raises it, naming
            the user's objects (``fn``, ``args[0]``), never the wrapper; the
            span is then ended, as ``failed``, or ``split`` for a map chunk
            (its calls are then sent one by one, each with its own span).
    """
    trace = _api or _load_api()
    if not trace.get_current_span().get_span_context().is_valid:
        return dumps(fn, args, kwargs), None
    name, attributes = _code_attributes(fn if named is None else named)
    if timeout is not None:
        attributes[TIMEOUT] = timeout
    if chunk_size is not None:
        attributes[CHUNK_SIZE] = chunk_size
    task = TaskSpan(_get_tracer().start_span(f"{TASK_SPAN} {name}", attributes=attributes))
    carrier: dict[str, str] = {}
    _get_propagator().inject(carrier, trace.set_span_in_context(task.span))
    try:
        return dumps(TracedCall(fn, carrier, timeout, named, chunk_size), args, kwargs), task
    except BaseException as exc:
        from safepool._errors import PicklingError

        if not isinstance(exc, PicklingError):
            task.end("rejected", exc)  # a KeyboardInterrupt while pickling
            raise
        if chunk_size is not None:
            task.end("split")
            raise
        error = _plain_error(dumps, fn, args, kwargs) or exc
        task.end("failed", error)
        raise error from error.__cause__


def _plain_error(
    dumps: Callable[[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]], Payload],
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
) -> BaseException | None:
    """The error pickling the call without the wrapper gives: it names ``fn``, ``args[0]``..."""
    from safepool._errors import PicklingError

    try:
        dumps(fn, args, kwargs)
    except PicklingError as error:
        return error
    return None


def handle_in_context(
    handle: Callable[[Any], object], record: Any, data: Mapping[str, Any]
) -> None:
    """Call ``handle(record)`` under the worker span a bridged record was logged in.

    So an OpenTelemetry log handler in the parent (which reads the current
    context, not the record's attributes) links the record to its trace.
    Malformed ids: ``handle(record)`` alone.
    """
    from opentelemetry import context, trace

    try:
        span_context = trace.SpanContext(
            trace_id=int(data[LOG_TRACE_ID], 16),
            span_id=int(data[LOG_SPAN_ID], 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(
                trace.TraceFlags.SAMPLED if data.get(LOG_SAMPLED) else trace.TraceFlags.DEFAULT
            ),
        )
    except (KeyError, TypeError, ValueError):
        handle(record)
        return
    if not span_context.is_valid:
        handle(record)
        return
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    try:
        handle(record)
    finally:
        context.detach(token)


# ---------------------------------------------------------------- worker side


class TracedCall:
    """A call run under its task span's trace context (picklable; sent in place of ``fn``).

    It carries the context as a W3C carrier dict (``traceparent``, and
    ``tracestate`` and ``baggage`` when set), not live objects, and imports
    OpenTelemetry only when it runs. Where OpenTelemetry is not installed
    (a Dask worker without it) it runs ``fn`` untraced.

    Guarantees: ``fn`` runs exactly once, with the arguments given, in a
    context whose current span is the "safepool.run" span (a child of the
    task span), or the task span itself if the worker has no SDK; its return
    value and exception are passed through unchanged.
    """

    __slots__ = ("carrier", "chunk_size", "fn", "named", "timeout")

    def __init__(
        self, fn: Callable[..., Any], carrier: dict[str, str], timeout: float | None,
        named: Any = None, chunk_size: int | None = None,
    ) -> None:
        self.fn = fn
        self.carrier = carrier
        self.timeout = timeout
        self.named = named
        self.chunk_size = chunk_size

    def __reduce__(self) -> tuple[Any, ...]:
        return (TracedCall, (self.fn, self.carrier, self.timeout, self.named, self.chunk_size))

    def __repr__(self) -> str:
        return f"TracedCall({self.fn!r}, {self.carrier!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            from opentelemetry import context, trace
        except ImportError:
            return self.fn(*args, **kwargs)
        parent = _get_propagator().extract(self.carrier)
        name, attributes = _code_attributes(self.fn if self.named is None else self.named)
        attributes[PROCESS_PID] = os.getpid()
        if self.timeout is not None:
            attributes[TIMEOUT] = self.timeout
        if self.chunk_size is not None:
            attributes[CHUNK_SIZE] = self.chunk_size
        span = _get_tracer().start_span(f"{RUN_SPAN} {name}", parent, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            result = self.fn(*args, **kwargs)
        except BaseException as exc:
            if span.is_recording():
                _fail(span, exc, "failed")
            raise
        else:
            span.set_attribute(OUTCOME, "completed")
            return result
        finally:
            context.detach(token)
            span.end()


def add_log_fields(data: dict[str, Any]) -> None:
    """Add the current span's ids to a worker's log record (its ``__dict__``, about to be sent).

    Hex, as OpenTelemetry's logging instrumentation formats them:
    ``otelTraceID`` (32 digits), ``otelSpanID`` (16), ``otelTraceSampled``
    (bool). Nothing when no span is current, or when the record has them
    already (the instrumentation runs in the worker too).
    """
    if LOG_SPAN_ID in data:
        return
    trace = sys.modules.get(OTEL_TRACE)
    if trace is None:
        return
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        data[LOG_TRACE_ID] = format(span_context.trace_id, "032x")
        data[LOG_SPAN_ID] = format(span_context.span_id, "016x")
        data[LOG_SAMPLED] = span_context.trace_flags.sampled
