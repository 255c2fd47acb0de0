"""Task functions and the worker-side SDK set-up for the tracing tests (test_tracing.py).

Module-level so that workers can import them under forkserver and spawn.
OpenTelemetry is imported inside the functions, never at import time: the
test that a plain run imports no OpenTelemetry runs tasks from here too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import safepool

log = logging.getLogger("obs.traced")


def setup_sdk() -> Any:
    """Resource setup: this worker's global tracer provider exports to memory."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


#: The resource the traced pools are made with: tasks find the exporter as ``resource("otel")``.
otel = safepool.Resource("otel", setup_sdk)


def span_info(span: Any) -> dict[str, Any]:
    """A finished span as plain data (ids as ints), to compare across processes."""
    context = span.get_span_context()
    return {
        "name": span.name,
        "trace_id": context.trace_id,
        "span_id": context.span_id,
        "parent_id": span.parent.span_id if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }


def finished_spans() -> list[dict[str, Any]]:
    """The spans this worker finished so far (its in-memory exporter's)."""
    exporter = safepool.resource("otel")
    return [span_info(span) for span in exporter.get_finished_spans()]


def work(x: int, fail: bool = False) -> tuple[int, int]:
    """A span of the task's own, a log record inside it; (x * 2, this worker's pid)."""
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span("work") as span:
        span.set_attribute("x", x)
        log.info("working on %s", x)
        if fail:
            raise ValueError(f"bad {x}")
    return x * 2, os.getpid()


def double(x: int) -> int:
    return x * 2


def add(x: int, y: int) -> int:
    return x + y


def current_ids() -> tuple[int, int, int]:
    """The trace id and span id current in the worker while the task runs, and its pid."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context.trace_id, context.span_id, os.getpid()


def current_baggage() -> dict[str, object]:
    from opentelemetry import baggage

    return dict(baggage.get_all())


def log_line(text: str) -> int:
    log.info("%s", text)
    return os.getpid()


def announce_then_sleep(path: str, seconds: float) -> None:
    """Write a line to the fifo at ``path`` (the task has started), then sleep."""
    with open(path, "w") as fifo:
        fifo.write(f"{os.getpid()}\n")
    time.sleep(seconds)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def crash() -> None:
    os._exit(7)


def otel_modules() -> list[str]:
    """The OpenTelemetry modules this worker has imported."""
    return sorted(name for name in sys.modules if name.startswith("opentelemetry"))


@safepool.task(timeout=30)
def decorated(x: int) -> int:
    return x + 1
