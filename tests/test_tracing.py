"""OpenTelemetry trace context crosses into the workers (safepool._tracing).

The parent records to an in-memory exporter; the workers configure their own
SDK through a Resource (tests.tracing_tasks.otel) and a task hands back the
spans they finished. Parent-child links are checked by trace and span ids.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.services import importorskip

importorskip("opentelemetry.sdk")  # the test extra has it: CI fails without

from opentelemetry import baggage, context, trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import safepool  # noqa: E402
from safepool import _tracing  # noqa: E402
from tests import tracing_tasks  # noqa: E402
from tests.conftest import ROOT, on_obs_logger  # noqa: E402
from tests.tracing_tasks import span_info  # noqa: E402


@pytest.fixture(scope="module")
def _parent_exporter():
    """This process's global tracer provider (set once per process), exporting to memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def spans(_parent_exporter):
    _parent_exporter.clear()
    return _parent_exporter


tracer = trace.get_tracer("tests")


def parent_spans(exporter: InMemorySpanExporter, count: int, timeout: float = 10) -> list[dict]:
    """The parent's finished spans once there are ``count`` of them.

    A task span ends in its future's done-callback, which runs just after
    ``result()`` may have returned: wait for it.
    """
    deadline = time.monotonic() + timeout
    while True:
        finished = [span_info(s) for s in exporter.get_finished_spans()]
        if len(finished) >= count or time.monotonic() > deadline:
            return finished
        time.sleep(0.01)


def named(spans: list[dict], name: str) -> list[dict]:
    return [s for s in spans if s["name"] == name]


def one(spans: list[dict], name: str) -> dict:
    (span,) = named(spans, name)
    return span


def worker_spans(pool: safepool.Executor) -> list[dict]:
    # Submitted with no span active: this call is not traced itself.
    return pool.submit(tracing_tasks.finished_spans).result(timeout=30)


# ------------------------------------------------------------------ submit


def test_submit_task_span_and_worker_spans_are_linked(make_pool, spans):
    pool = make_pool(1, resources=[tracing_tasks.otel])
    with tracer.start_as_current_span("request") as request:
        value, pid = pool.submit(tracing_tasks.work, 3).result(timeout=30)
    assert value == 6
    root = request.get_span_context()

    parent = parent_spans(spans, 2)
    task = one(parent, "safepool.task work")
    assert task["trace_id"] == root.trace_id
    assert task["parent_id"] == root.span_id
    assert task["attributes"] == {
        "code.function": "work",
        "code.namespace": "tests.tracing_tasks",
        "safepool.worker.pid": pid,
        "safepool.task.outcome": "completed",
    }
    assert task["status"] == "UNSET"

    inside = worker_spans(pool)
    run = one(inside, "safepool.run work")
    own = one(inside, "work")
    assert {s["trace_id"] for s in inside} == {root.trace_id}
    assert run["parent_id"] == task["span_id"]  # the worker's span is the task span's child
    assert own["parent_id"] == run["span_id"]  # and the task's own work is the run's child
    assert run["attributes"]["process.pid"] == pid
    assert run["attributes"]["safepool.task.outcome"] == "completed"
    assert run["attributes"]["code.function"] == "work"


def test_options_timeout_and_task_decorator_are_traced(make_pool, spans):
    pool = make_pool(1, resources=[tracing_tasks.otel])
    with tracer.start_as_current_span("request"):
        assert pool.options(timeout=20).submit(tracing_tasks.double, 2).result(timeout=30) == 4
        assert pool.submit(tracing_tasks.decorated, 1).result(timeout=30) == 2
    parent = parent_spans(spans, 3)
    assert one(parent, "safepool.task double")["attributes"]["safepool.task.timeout"] == 20
    decorated = one(parent, "safepool.task decorated")
    assert decorated["attributes"]["safepool.task.timeout"] == 30
    assert decorated["attributes"]["code.namespace"] == "tests.tracing_tasks"
    runs = {s["parent_id"]: s for s in named(worker_spans(pool), "safepool.run double")}
    assert runs[one(parent, "safepool.task double")["span_id"]]["attributes"][
        "safepool.task.timeout"] == 20


def test_failed_task_records_the_exception_on_both_spans(make_pool, spans):
    pool = make_pool(1, resources=[tracing_tasks.otel])
    with tracer.start_as_current_span("request"):
        future = pool.submit(tracing_tasks.work, 5, fail=True)
        with pytest.raises(ValueError, match="bad 5"):
            future.result(timeout=30)
    task = one(parent_spans(spans, 2), "safepool.task work")
    assert task["status"] == "ERROR"
    assert task["attributes"]["safepool.task.outcome"] == "failed"
    assert task["attributes"]["error.type"] == "ValueError"
    assert task["events"] == ["exception"]
    inside = worker_spans(pool)
    run = one(inside, "safepool.run work")
    assert task["attributes"]["safepool.worker.pid"] == run["attributes"]["process.pid"]
    assert run["status"] == "ERROR"
    assert run["attributes"]["safepool.task.outcome"] == "failed"
    assert one(inside, "work")["status"] == "ERROR"


def test_the_span_leaves_the_unretrieved_error_report_alone(make_pool, spans):
    # The done-callback reads the exception without marking it retrieved.
    pool = make_pool(1)
    with tracer.start_as_current_span("request"):
        future = pool.submit(tracing_tasks.work, 1, fail=True)
        cf.wait([future], timeout=30)
    assert one(parent_spans(spans, 2), "safepool.task work")["status"] == "ERROR"
    assert not future._retrieved
    assert isinstance(future.exception(), ValueError)


# ----------------------------------------------------------------- map


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_calls_and_chunks_are_traced(make_pool, spans, chunksize):
    pool = make_pool(1, resources=[tracing_tasks.otel])
    with tracer.start_as_current_span("request") as request:
        assert list(pool.map(tracing_tasks.double, range(5), chunksize=chunksize)) == [
            0, 2, 4, 6, 8]
        assert list(pool.map(tracing_tasks.add, [1, 2], [3, 4], chunksize=chunksize)) == [4, 6]
    calls = [5, 2] if chunksize == 1 else [2, 1]  # tasks per map
    expected = sum(calls) if chunksize == 1 else 2 + 1
    parent = parent_spans(spans, expected + 1)
    doubles = named(parent, "safepool.task double")
    adds = named(parent, "safepool.task add")
    assert (len(doubles), len(adds)) == ((5, 2) if chunksize == 1 else (2, 1))
    root = request.get_span_context().span_id
    assert {s["parent_id"] for s in doubles + adds} == {root}
    if chunksize > 1:
        assert sorted(s["attributes"]["safepool.map.chunk_size"] for s in doubles) == [2, 3]
        assert adds[0]["attributes"]["safepool.map.chunk_size"] == 2
    else:
        assert all("safepool.map.chunk_size" not in s["attributes"] for s in doubles)
    runs = named(worker_spans(pool), "safepool.run double")
    assert sorted(r["parent_id"] for r in runs) == sorted(s["span_id"] for s in doubles)


def test_a_chunk_that_cannot_be_pickled_is_split_and_each_call_traced(make_pool, spans):
    pool = make_pool(1)
    import threading

    items = [1, threading.Lock(), 3]
    with tracer.start_as_current_span("request"):
        results = pool.map(tracing_tasks.double, items, chunksize=3)
        assert next(results) == 2
        with pytest.raises(safepool.PicklingError, match=r"args\[0\]"):
            next(results)
    parent = parent_spans(spans, 5)
    outcomes = sorted(s["attributes"]["safepool.task.outcome"]
                      for s in named(parent, "safepool.task double"))
    assert outcomes == ["completed", "completed", "failed", "split"]


# --------------------------------------------- timeouts, crashes, stops, cancels


def test_timeout_is_recorded_by_the_parent(make_pool, spans):
    pool = make_pool(1, resources=[tracing_tasks.otel])
    with tracer.start_as_current_span("request"):
        future = pool.options(timeout=0.5).submit(tracing_tasks.sleep, 30)
        with pytest.raises(safepool.TaskTimeoutError) as info:
            future.result(timeout=30)
    task = one(parent_spans(spans, 2), "safepool.task sleep")
    assert task["status"] == "ERROR"
    assert task["attributes"]["safepool.task.outcome"] == "timed_out"
    assert task["attributes"]["safepool.task.timeout"] == 0.5
    assert task["attributes"]["safepool.worker.pid"] == info.value.pid
    assert task["attributes"]["error.type"] == "safepool.TaskTimeoutError"


def test_crash_is_recorded_by_the_parent(make_pool, spans):
    pool = make_pool(1)
    with tracer.start_as_current_span("request"):
        future = pool.submit(tracing_tasks.crash)
        with pytest.raises(safepool.WorkerCrashedError) as info:
            future.result(timeout=30)
    task = one(parent_spans(spans, 2), "safepool.task crash")
    assert task["attributes"]["safepool.task.outcome"] == "crashed"
    assert task["attributes"]["safepool.worker.pid"] == info.value.pid
    assert task["status"] == "ERROR"


def test_stop_task_and_cancel_are_recorded(make_pool, spans, fifo):
    pool = make_pool(1)
    with tracer.start_as_current_span("request"):
        running = pool.submit(tracing_tasks.announce_then_sleep, fifo.path, 30)
        waiting = pool.submit(tracing_tasks.double, 1)
        pid = int(fifo.line())
        assert waiting.cancel()
        assert pool.stop_task(running)
    parent = parent_spans(spans, 3)
    stopped = one(parent, "safepool.task announce_then_sleep")
    assert stopped["attributes"]["safepool.task.outcome"] == "stopped"
    assert stopped["attributes"]["safepool.worker.pid"] == pid
    cancelled = one(parent, "safepool.task double")
    assert cancelled["attributes"]["safepool.task.outcome"] == "cancelled"
    assert cancelled["status"] == "UNSET"


def test_submit_after_shutdown_ends_the_span(make_pool, spans):
    pool = make_pool(1)
    pool.shutdown()
    with tracer.start_as_current_span("request"), pytest.raises(RuntimeError):
        pool.submit(tracing_tasks.double, 1)
    task = one(parent_spans(spans, 2), "safepool.task double")
    assert task["attributes"]["safepool.task.outcome"] == "rejected"


# ------------------------------------------------------------ pickling errors


def test_pickling_error_names_the_users_objects(make_pool, spans):
    import threading

    pool = make_pool(1)
    untraced = pool.submit(tracing_tasks.double, threading.Lock()).exception()
    with tracer.start_as_current_span("request"):
        traced = pool.submit(tracing_tasks.double, threading.Lock()).exception()
        traced_fn = pool.submit(lambda: 1).exception()
    assert isinstance(traced, safepool.PicklingError)
    assert str(traced) == str(untraced)
    assert "args[0]" in str(traced)
    assert isinstance(traced_fn, safepool.PicklingError)
    assert "TracedCall" not in str(traced_fn) and "fn.fn" not in str(traced_fn)
    # The same words (3.14+ also print each lambda's repr, whose address differs).
    untraced_fn = pool.submit(lambda: 1).exception()
    assert re.sub("0x[0-9a-f]+", "0x", str(traced_fn)) == re.sub("0x[0-9a-f]+", "0x",
                                                                 str(untraced_fn))
    failed = named(parent_spans(spans, 3), "safepool.task double")
    assert failed[0]["attributes"]["safepool.task.outcome"] == "failed"
    assert failed[0]["attributes"]["error.type"] == "safepool.PicklingError"


# ------------------------------------------------------------- no tracing


def test_without_an_active_span_nothing_is_wrapped(make_pool, spans, monkeypatch):
    pool = make_pool(1)
    sent: list[Any] = []
    dumps = pool._engine.dumps

    def spy(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        sent.append(fn)
        return dumps(fn, args, kwargs)

    monkeypatch.setattr(pool._engine, "dumps", spy)
    assert trace.get_current_span() is trace.INVALID_SPAN
    trace_id, span_id, _ = pool.submit(tracing_tasks.current_ids).result(timeout=30)
    assert list(pool.map(tracing_tasks.double, [1, 2, 3], chunksize=2)) == [2, 4, 6]
    assert (trace_id, span_id) == (0, 0)
    assert sent[0] is tracing_tasks.current_ids
    assert not any(isinstance(fn, _tracing.TracedCall) for fn in sent)
    assert spans.get_finished_spans() == ()


def test_a_non_recording_span_still_propagates(make_pool, spans):
    # A span context from elsewhere (e.g. an incoming request not sampled here).
    remote = trace.SpanContext(0x1234, 0x5678, is_remote=True,
                               trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT))
    pool = make_pool(1)
    with trace.use_span(trace.NonRecordingSpan(remote)):
        trace_id, span_id, _ = pool.submit(tracing_tasks.current_ids).result(timeout=30)
    assert trace_id == 0x1234
    assert span_id != 0
    assert spans.get_finished_spans() == ()  # the default sampler follows the parent: not sampled


def test_workers_without_an_sdk_still_get_the_context_and_baggage(make_pool, spans):
    pool = make_pool(1)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("request") as request:
            trace_id, span_id, _ = pool.submit(tracing_tasks.current_ids).result(timeout=30)
            assert pool.submit(tracing_tasks.current_baggage).result(timeout=30) == {
                "tenant": "acme"}
    finally:
        context.detach(token)
    assert trace_id == request.get_span_context().trace_id
    # No SDK in the worker: its "safepool.run" span is non-recording and carries
    # the task span's context, so the task runs as that span's child.
    tasks = named(parent_spans(spans, 3), "safepool.task current_ids")
    assert span_id == tasks[0]["span_id"]


def test_import_and_run_never_import_opentelemetry():
    script = (
        "import sys, json, safepool\n"
        "from tests import tracing_tasks\n"
        "if __name__ == '__main__':\n"
        "    with safepool.Executor(1, 'spawn') as pool:\n"
        "        pool.submit(tracing_tasks.double, 1).result()\n"
        "        list(pool.map(tracing_tasks.double, range(4), chunksize=2))\n"
        "        pool.submit(tracing_tasks.log_line, 'x').result()\n"
        "        inside = pool.submit(tracing_tasks.otel_modules).result()\n"
        "    here = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "    print(json.dumps([here, inside]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [[], []]


# ----------------------------------------------------------------- logging


class _Handler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[logging.LogRecord, trace.SpanContext]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record, trace.get_current_span().get_span_context()))


@pytest.fixture
def traced_records():
    with on_obs_logger(_Handler()) as handler:
        yield handler


def test_bridged_records_carry_the_trace_and_span_ids(make_pool, spans, traced_records):
    pool = make_pool(1, resources=[tracing_tasks.otel])
    with tracer.start_as_current_span("request"):
        pool.submit(tracing_tasks.work, 7).result(timeout=30)
    pool.submit(tracing_tasks.log_line, "outside").result(timeout=30)
    own = one(worker_spans(pool), "work")
    (record, current), (plain, plain_current) = traced_records.seen
    assert record.getMessage() == "working on 7"
    assert record.otelTraceID == format(own["trace_id"], "032x")
    assert record.otelSpanID == format(own["span_id"], "016x")
    assert record.otelTraceSampled is True
    # The parent handled it under that span's context (for OpenTelemetry log handlers).
    assert (current.trace_id, current.span_id) == (own["trace_id"], own["span_id"])
    # A record logged outside any span gets no ids and is handled outside any span.
    assert not hasattr(plain, "otelSpanID")
    assert not plain_current.is_valid


def test_add_log_fields_keeps_what_the_instrumentation_set():
    data = {"otelSpanID": "0", "otelTraceID": "0", "otelTraceSampled": False}
    with tracer.start_as_current_span("x"):
        _tracing.add_log_fields(data)
    assert data == {"otelSpanID": "0", "otelTraceID": "0", "otelTraceSampled": False}


def test_malformed_ids_on_a_record_are_handled_plainly():
    seen: list[trace.SpanContext] = []
    _tracing.handle_in_context(
        lambda record: seen.append(trace.get_current_span().get_span_context()),
        None, {"otelTraceID": "zz", "otelSpanID": "0"},
    )
    assert seen == [trace.INVALID_SPAN_CONTEXT]
