"""safepool.integrations.prometheus: stats() scraped over HTTP from a real prometheus_client server.

Every test uses its own CollectorRegistry, served by ``start_http_server`` on
127.0.0.1, and reads the text exposition with urllib and prometheus_client's
parser: the numbers checked are the ones Prometheus would store.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from tests.services import importorskip

prometheus_client = importorskip("prometheus_client")  # the test extra has it: CI fails without

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import safepool  # noqa: E402
from safepool.integrations import prometheus as sp_prometheus  # noqa: E402
from tests import obs_tasks  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

OUTCOMES = ("completed", "failed", "timed_out", "crashed", "stopped", "cancelled")
BOUNDS = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
          "2.5", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0", "1800.0", "3600.0",
          "+Inf")


class Scrape:
    """One scrape: the exposition text, and its samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"duplicate series {key}"
                self.samples[key] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def pools(self) -> set[str]:
        return {dict(labels)["pool"] for name, labels in self.samples
                if name.startswith("safepool_")}

    def buckets(self, pool: str) -> list[tuple[str, float]]:
        return [(le, self("safepool_task_duration_seconds_bucket", pool=pool, le=le))
                for le in BOUNDS]


def _serve(registry: CollectorRegistry) -> tuple[int, Callable[[], None]]:
    """prometheus_client's HTTP server on 127.0.0.1, on a free port; its port and a stop."""
    started = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    if started is not None:  # (server, thread) since prometheus_client 0.20
        server, thread = started
    else:  # older: the same WSGI app, served the way start_http_server does, but stoppable
        class Quiet(WSGIRequestHandler):
            def log_message(self, format, *args):
                pass

        server = make_server("127.0.0.1", 0, prometheus_client.make_wsgi_app(registry),
                             handler_class=Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return server.server_port, stop


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def scrape(registry) -> Iterator[Callable[[], Scrape]]:
    port, stop = _serve(registry)

    def fetch() -> Scrape:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            assert reply.status == 200
            return Scrape(reply.read().decode())

    yield fetch
    stop()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_importing_safepool_does_not_import_prometheus_client():
    subprocess.run(
        [sys.executable, "-c",
         "import safepool, sys; safepool.Executor; safepool.Stats; safepool.TaskSeconds; "
         "assert 'prometheus_client' not in sys.modules, 'imported prometheus_client'"],
        check=True, cwd=ROOT, timeout=60,
    )


def test_every_outcome_recycle_reason_and_duration_is_exported(make_pool, registry, scrape):
    mixed = make_pool(1)
    recycling = make_pool(1, max_tasks_per_child=2)
    sp_prometheus.instrument(mixed, registry=registry, pool="mixed")
    sp_prometheus.instrument(recycling, registry=registry, pool="recycling")

    futures = [
        mixed.submit(obs_tasks.succeed, 1),
        mixed.submit(obs_tasks.sleep_then, 2, 0.3),
        mixed.submit(obs_tasks.sleep_then, 3, 0.3),
        mixed.submit(obs_tasks.fail, "a"),
        mixed.submit(obs_tasks.fail, "b"),
        mixed.submit(obs_tasks.crash),
        mixed.options(timeout=0.5).submit(obs_tasks.hang),
    ]
    for n in range(5):
        assert recycling.submit(obs_tasks.succeed, n).result(timeout=30) == n
    wait(futures, timeout=60)
    assert all(f.done() for f in futures)

    s = scrape()
    assert s.pools() == {"mixed", "recycling"}
    # One TYPE line per family, whatever the number of executors.
    assert s.text.count("# TYPE safepool_tasks_total counter") == 1
    assert s.text.count("# TYPE safepool_task_duration_seconds histogram") == 1

    assert s("safepool_tasks_submitted_total", pool="mixed") == 7
    got = {o: s("safepool_tasks_total", pool="mixed", outcome=o) for o in OUTCOMES}
    assert got == dict(completed=3, failed=2, timed_out=1, crashed=1, stopped=0, cancelled=0)
    assert s("safepool_tasks_queued", pool="mixed") == 0
    assert s("safepool_tasks_running", pool="mixed") == 0
    recycled = {r: s("safepool_workers_recycled_total", pool="mixed", reason=r)
                for r in safepool._stats.RECYCLE_REASONS}
    assert recycled == dict(count=0, memory=0, poisoned=0, crash=1, timeout=1, idle=0, stopped=0)

    assert s("safepool_tasks_submitted_total", pool="recycling") == 5
    assert s("safepool_tasks_total", pool="recycling", outcome="completed") == 5
    assert s("safepool_workers_recycled_total", pool="recycling", reason="count") == 2

    # Durations: the 3 completed and 2 failed tasks of "mixed" (the crashed and the
    # timed-out one have none), and the 5 of "recycling".
    buckets = dict(s.buckets("mixed"))
    counts = [n for _, n in s.buckets("mixed")]
    assert counts == sorted(counts), "buckets are cumulative"
    assert s("safepool_task_duration_seconds_count", pool="mixed") == buckets["+Inf"] == 5
    assert buckets["0.25"] == 3  # succeed and the two fail()s; the sleeps took >= 0.3 s
    assert buckets["5.0"] == 5
    total = s("safepool_task_duration_seconds_sum", pool="mixed")
    assert 0.6 <= total < 5
    assert s("safepool_task_duration_seconds_count", pool="recycling") == 5
    assert dict(s.buckets("recycling"))["0.25"] == 5
    assert 0 < s("safepool_task_duration_seconds_sum", pool="recycling") < 1.25

    # The same numbers as stats() (the pools are idle: nothing moves).
    stats = mixed.stats()
    assert stats.task_seconds.count == 5
    assert stats.task_seconds.sum == pytest.approx(total, rel=1e-9)
    assert [n for _, n in stats.task_seconds.buckets] == counts


def test_workers_by_state_and_queued_running_tasks(make_pool, registry, scrape):
    pool = make_pool(2)
    sp_prometheus.instrument(pool, registry=registry)  # pool="default"
    s = scrape()
    assert {st: s("safepool_workers", pool="default", state=st)
            for st in sp_prometheus.WORKER_STATES} == dict.fromkeys(sp_prometheus.WORKER_STATES, 0)

    hanging = [pool.submit(obs_tasks.hang) for _ in range(2)]
    queued = [pool.submit(obs_tasks.succeed, n) for n in range(3)]
    wait_for(lambda: all(f.running() for f in hanging))
    s = scrape()
    assert s("safepool_workers", pool="default", state="busy") == 2
    assert s("safepool_workers", pool="default", state="idle") == 0
    assert s("safepool_tasks_running", pool="default") == 2
    assert s("safepool_tasks_queued", pool="default") == 3
    assert s("safepool_tasks_submitted_total", pool="default") == 5

    assert queued[0].cancel()
    pool.kill_workers()
    s = scrape()
    assert s("safepool_tasks_total", pool="default", outcome="stopped") == 2
    assert s("safepool_tasks_total", pool="default", outcome="cancelled") == 3
    assert s("safepool_tasks_running", pool="default") == 0
    assert s("safepool_tasks_queued", pool="default") == 0
    assert s("safepool_task_duration_seconds_count", pool="default") == 0


def test_idle_workers_after_work_and_final_totals_after_shutdown(make_pool, registry, scrape):
    pool = make_pool(2)
    sp_prometheus.instrument(pool, registry=registry, pool="p")
    list(pool.map(obs_tasks.succeed, range(6)))
    wait_for(lambda: len(pool.stats().workers) == 2 and
             all(w.state == "idle" for w in pool.stats().workers))
    s = scrape()
    assert s("safepool_workers", pool="p", state="idle") == 2
    assert s("safepool_workers", pool="p", state="busy") == 0
    pool.shutdown()
    s = scrape()  # shut down: no workers, the totals stay
    assert sum(s("safepool_workers", pool="p", state=st) for st in sp_prometheus.WORKER_STATES) == 0
    assert s("safepool_tasks_total", pool="p", outcome="completed") == 6
    assert s("safepool_task_duration_seconds_count", pool="p") == 6


def test_a_collected_executor_is_not_kept_alive_and_its_series_go(registry, scrape):
    pool = safepool.Executor(1)
    collector = sp_prometheus.instrument(pool, registry=registry, pool="gone")
    assert pool.submit(obs_tasks.succeed, 1).result(timeout=30) == 1
    assert scrape()("safepool_tasks_total", pool="gone", outcome="completed") == 1
    pool.shutdown()
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None, "the collector (or something) kept the executor alive"
    s = scrape()
    assert s.pools() == set()
    assert "# TYPE safepool_tasks_total counter" in s.text  # the families stay, empty
    assert collector.pools == ()
    # Its name is free again.
    with safepool.Executor(1) as again:
        assert sp_prometheus.instrument(again, registry=registry, pool="gone") is collector
        assert collector.pools == ("gone",)


def test_adding_removing_and_unregistering(registry, scrape):
    with safepool.Executor(1) as a, safepool.Executor(1) as b:
        collector = sp_prometheus.instrument(a, registry=registry, pool="a")
        # One collector per registry, shared; adding the same again does nothing.
        assert sp_prometheus.instrument(b, registry=registry, pool="b") is collector
        assert sp_prometheus.instrument(a.options(timeout=5), registry=registry,
                                        pool="a") is collector
        assert collector.pools == ("a", "b")
        assert scrape().pools() == {"a", "b"}

        with pytest.raises(ValueError, match="pool='a' already names another executor"):
            sp_prometheus.instrument(b, registry=registry, pool="a")
        with pytest.raises(ValueError, match="already exported as pool='b'"):
            collector.add(b, "b2")
        with pytest.raises(ValueError, match="non-empty"):
            collector.add(a, "")
        with pytest.raises(TypeError, match="pool must be a str"):
            collector.add(a, 3)  # type: ignore[arg-type]

        collector.remove("b")
        assert scrape().pools() == {"a"}
        with pytest.raises(KeyError, match="no executor is exported as pool='b'"):
            collector.remove("b")

        collector.unregister()
        assert scrape().pools() == set()
        assert "safepool_" not in scrape().text
        with pytest.raises(ValueError, match="not registered by instrument"):
            collector.unregister()
        fresh = sp_prometheus.instrument(b, registry=registry, pool="b")
        assert fresh is not collector
        assert scrape().pools() == {"b"}


def test_something_that_is_not_a_safepool_executor_is_refused(registry):
    with cf.ThreadPoolExecutor(1) as threads, pytest.raises(
        TypeError, match=r"expected a safepool.Executor, got concurrent.futures.thread"
    ):
        sp_prometheus.instrument(threads, registry=registry)  # type: ignore[arg-type]
    assert "safepool_" not in prometheus_client.generate_latest(registry).decode()


def test_other_safepool_metrics_on_the_registry_are_refused(registry):
    registry.register(sp_prometheus.StatsCollector())  # registered by hand
    with safepool.Executor(1) as pool, pytest.raises(ValueError, match="Duplicated timeseries"):
        sp_prometheus.instrument(pool, registry=registry)


def test_a_failing_stats_leaves_out_only_that_pool_and_is_logged(registry, scrape, caplog):
    with safepool.Executor(1) as good, safepool.Executor(1) as bad:
        sp_prometheus.instrument(good, registry=registry, pool="good")
        sp_prometheus.instrument(bad, registry=registry, pool="bad")

        def broken():
            raise ConnectionError("scheduler unreachable")

        bad.stats = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.DEBUG, logger="safepool"):
            assert scrape().pools() == {"good"}
            assert scrape().pools() == {"good"}
        records = [r for r in caplog.records if "pool='bad'" in r.getMessage()]
        assert [r.levelname for r in records] == ["WARNING", "DEBUG"]  # once loudly
        assert "ConnectionError: scheduler unreachable" in caplog.text
        del bad.stats
        assert scrape().pools() == {"good", "bad"}
