"""Records logged in workers reach the parent's handlers (the logging bridge)."""

from __future__ import annotations

import logging
import re
import threading
import warnings

import pytest

import safepool
from tests import obs_tasks
from tests.conftest import on_obs_logger


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def captured():
    """A handler on the parent's ``obs`` logger (INFO, not propagating to pytest's root)."""
    with on_obs_logger(ListHandler()) as handler:
        yield handler


def test_records_arrive_with_name_level_and_worker_identity(make_pool, captured):
    pool = make_pool(1)
    pid = pool.submit(obs_tasks.log_lines, "a", 5).result(timeout=30)
    # No shutdown, no wait: a task's records are handled before its future resolves.
    assert captured.messages() == [f"a record {i}" for i in range(5)]
    for record in captured.records:
        assert record.name == "obs.worker"
        assert record.levelname == "INFO"
        assert record.process == pid
        assert record.processName != "MainProcess"


def test_parent_levels_and_filters_apply(make_pool, captured):
    captured.addFilter(lambda record: "secret" not in record.getMessage())
    pool = make_pool(1)
    pool.submit(obs_tasks.log_levels, "x").result(timeout=30)
    assert captured.messages() == ["x info", "x warning"]

    # A level raised after the worker started is still respected.
    logging.getLogger("obs").setLevel(logging.WARNING)
    pool.submit(obs_tasks.log_levels, "y").result(timeout=30)
    assert captured.messages()[2:] == ["y warning"]


def test_a_more_verbose_parent_logger_gets_debug_records(make_pool, captured):
    logging.getLogger("obs.worker").setLevel(logging.DEBUG)
    try:
        pool = make_pool(1)
        pool.submit(obs_tasks.log_levels, "d").result(timeout=30)
    finally:
        logging.getLogger("obs.worker").setLevel(logging.NOTSET)
    assert captured.messages()[:2] == ["d debug", "d info"]


def test_exc_info_arrives_as_the_child_traceback_text(make_pool, captured):
    pool = make_pool(1)
    pool.submit(obs_tasks.log_exception, "e").result(timeout=30)
    (record,) = captured.records
    assert record.getMessage() == "e failed"
    assert record.exc_info is None
    assert "KeyError: 'missing'" in record.exc_text
    assert "in log_exception" in record.exc_text
    formatted = logging.Formatter("%(message)s").format(record)
    assert formatted.startswith("e failed\nTraceback (most recent call last):")


def test_unpicklable_extra_is_sent_as_its_repr(make_pool, captured):
    pool = make_pool(1)
    pool.submit(obs_tasks.log_with_unpicklable_extra, "u").result(timeout=30)
    (record,) = captured.records
    assert record.plain == 7
    assert "lock" in record.lock and isinstance(record.lock, str)


def test_records_from_many_worker_threads_all_arrive_intact(make_pool, captured):
    pool = make_pool(1)
    pool.submit(obs_tasks.log_from_thread, "m", 200).result(timeout=30)
    messages = captured.messages()
    assert len(messages) == 800
    for t in range(4):
        mine = [m for m in messages if m.startswith(f"m-t{t} ")]
        assert mine == [f"m-t{t} record {i}" for i in range(200)]  # in order per thread


def test_records_logged_before_a_crash_or_error_arrive_first(make_pool, captured):
    pool = make_pool(1)
    error = pool.submit(obs_tasks.log_then_crash, "c").exception(timeout=30)
    assert isinstance(error, safepool.WorkerCrashedError)
    assert captured.messages() == ["c before the crash"]
    error = pool.submit(obs_tasks.log_then_fail, "f").exception(timeout=30)
    assert isinstance(error, ValueError)
    assert captured.messages()[-1] == "f before the error"


def test_worker_logs_false_turns_the_bridge_off(make_pool, captured):
    pool = make_pool(1, worker_logs=False)
    pool.submit(obs_tasks.log_levels, "off").result(timeout=30)
    pool.shutdown()
    assert captured.records == []


@pytest.mark.parametrize("target", ["sink.workers", logging.getLogger("sink.workers")])
def test_worker_logs_can_point_at_another_logger(make_pool, captured, target):
    sink = logging.getLogger("sink.workers")
    handler = ListHandler()
    sink.addHandler(handler)
    sink.setLevel(logging.INFO)
    sink.propagate = False
    try:
        pool = make_pool(1, worker_logs=target)
        pool.submit(obs_tasks.log_levels, "s").result(timeout=30)
    finally:
        sink.removeHandler(handler)
        sink.setLevel(logging.NOTSET)
        sink.propagate = True
    assert handler.messages() == ["s info", "s warning", "s error secret"]
    assert {r.name for r in handler.records} == {"obs.worker"}  # the worker's own name
    assert captured.records == []


def test_bad_worker_logs_value_is_refused_at_the_call_site():
    with pytest.raises(TypeError, match="worker_logs must be"):
        safepool.Executor(1, worker_logs=3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_no_deadlock_and_no_lost_record_while_parent_threads_log(make_pool, tmp_path):
    """The fork-time logging deadlock: parent threads hold the file handler's locks
    constantly while workers start, recycle and log. Every record must arrive."""
    path = tmp_path / "app.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(processName)s|%(name)s|%(message)s"))
    logger = logging.getLogger("obs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stop = threading.Event()
    counts = [0, 0, 0]

    def chatter(index: int) -> None:
        parent_log = logging.getLogger(f"obs.parent{index}")
        while not stop.is_set():
            parent_log.info("parent %d line %d", index, counts[index])
            counts[index] += 1

    threads = [threading.Thread(target=chatter, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", safepool.ForkWarning)
            pool = make_pool(2, max_tasks_per_child=2)
        futures = [pool.submit(obs_tasks.log_lines, f"task{n}", 20) for n in range(30)]
        pids = {f.result(timeout=60) for f in futures}
        pool.shutdown(wait=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True

    assert len(pids) >= 15  # workers really were recycled while the parent logged
    lines = path.read_text().splitlines()
    worker_lines = {line.split("|")[2] for line in lines if "|obs.worker|" in line}
    assert worker_lines == {f"task{n} record {i}" for n in range(30) for i in range(20)}
    for index in range(3):
        mine = [ln for ln in lines if f"|obs.parent{index}|" in ln]
        assert len(mine) == counts[index]
    assert all(re.fullmatch(r"[^|]+\|[^|]+\|[^|]+", line) for line in lines)  # no torn lines
