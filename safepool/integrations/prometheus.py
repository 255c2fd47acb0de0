"""Prometheus metrics: ``Executor.stats()`` read at scrape time.

A custom collector, not instruments updated per task: each scrape calls
[`Executor.stats()`][safepool.Executor.stats] once per executor (tens of
microseconds) and turns the snapshot into metric families, so running tasks
costs nothing more. Several executors can share a registry; a ``pool`` label
tells them apart.

```python
import prometheus_client
import safepool
from safepool.integrations import prometheus as sp_prometheus

pool = safepool.Executor(max_workers=4)
sp_prometheus.instrument(pool, pool="images")
prometheus_client.start_http_server(9100)
```

Requires ``prometheus_client`` (``pip install 'safepool[prometheus]'``);
``import safepool`` never imports it, only this module does. See
[Metrics (Prometheus)](metrics.md) for the metrics and their meaning.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from safepool._executor import Executor, ExecutorView
from safepool._stats import RECYCLE_REASONS, Stats

__all__ = ["OUTCOMES", "WORKER_STATES", "StatsCollector", "instrument"]

_log = logging.getLogger("safepool")

#: The values of the ``outcome`` label of ``safepool_tasks_total``.
OUTCOMES = ("completed", "failed", "timed_out", "crashed", "stopped", "cancelled")
#: The values of the ``state`` label of ``safepool_workers`` (each is exported, 0 if none).
WORKER_STATES = ("starting", "idle", "busy", "retiring", "killing")

# The collector instrument() made for each registry, so that executors share it: one
# collector yields each metric family once, with one series per pool.
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, StatsCollector] = (
    weakref.WeakKeyDictionary()
)
_by_registry_lock = threading.Lock()


class StatsCollector(Collector):
    """A Prometheus collector that reads the ``stats()`` of executors at scrape time.

    Usually made and registered by [`instrument()`][safepool.integrations.prometheus.instrument],
    one per registry. Made directly, add executors with
    [`add()`][safepool.integrations.prometheus.StatsCollector.add] and register it yourself
    (``registry.register(collector)``).

    It holds each executor by weak reference: it never keeps one alive. An
    executor that was shut down still reports its final totals (with no
    workers) for as long as it exists; once it is garbage-collected, its series
    are no longer exported and its pool name is free again. Safe to use from
    any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executors: dict[str, weakref.ref[Executor]] = {}
        self._failing: set[str] = set()  # pools whose stats() raised at the last scrape
        self._registry: CollectorRegistry | None = None

    def add(self, executor: Executor | ExecutorView, pool: str = "default") -> None:
        """Export ``executor``'s statistics with the label ``pool=<pool>``.

        Adding the same executor under the same name again does nothing.

        Args:
            executor: a [`safepool.Executor`][safepool.Executor] (a view made by
                ``options()`` stands for its executor).
            pool: the value of the ``pool`` label: a short, fixed name (one per
                executor, not per task or request).

        Raises:
            TypeError: ``executor`` is not a safepool executor, or ``pool`` is not a string.
            ValueError: ``pool`` is empty or names another live executor, or
                ``executor`` is already exported under another name.
        """
        target = _executor_of(executor)
        if not isinstance(pool, str):
            raise TypeError(f"pool must be a str (a label value), not {type(pool).__name__}")
        if not pool:
            raise ValueError("pool must be a non-empty name, such as 'default' or 'images'")
        with self._lock:
            for name, ref in list(self._executors.items()):
                other = ref()
                if other is None:
                    del self._executors[name]  # collected: its name is free
                elif other is target and name != pool:
                    raise ValueError(
                        f"this executor is already exported as pool={name!r}; remove() it "
                        f"first to rename it (one executor under two names would be counted twice)"
                    )
                elif name == pool and other is not target:
                    raise ValueError(
                        f"pool={pool!r} already names another executor in this collector: "
                        f"pass a different pool= to tell them apart"
                    )
            self._executors[pool] = weakref.ref(target)

    def remove(self, pool: str = "default") -> None:
        """Stop exporting the executor labelled ``pool``; its series disappear at the next scrape.

        Raises:
            KeyError: no executor is exported under that name.
        """
        with self._lock:
            if pool not in self._executors:
                known = ", ".join(repr(name) for name in sorted(self._executors)) or "none"
                raise KeyError(f"no executor is exported as pool={pool!r} (exported: {known})")
            del self._executors[pool]
            self._failing.discard(pool)

    @property
    def pools(self) -> tuple[str, ...]:
        """The names of the executors exported now (those not garbage-collected), sorted."""
        with self._lock:
            return tuple(sorted(name for name, ref in self._executors.items() if ref() is not None))

    def unregister(self) -> None:
        """Remove this collector, and every executor's series, from the registry it was
        registered with by ``instrument()``; a later ``instrument()`` call makes a new one.

        Raises:
            ValueError: ``instrument()`` did not register it (or it was unregistered
                already); call ``registry.unregister(collector)`` on the registry
                you registered it with.
        """
        with _by_registry_lock:
            registry = self._registry
            if registry is None:
                raise ValueError(
                    "this collector is not registered by instrument(): call "
                    "registry.unregister(collector) on the registry you registered it with"
                )
            registry.unregister(self)
            self._registry = None
            if _by_registry.get(registry) is self:
                del _by_registry[registry]

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (the registry checks names with them)."""
        return list(_Families())

    def collect(self) -> Iterable[Metric]:
        """Read ``stats()`` of each live executor now; the metric families with their samples.

        An executor whose ``stats()`` raises (a cluster that cannot be reached)
        is left out of this scrape and logged on the ``safepool`` logger; the
        others are exported.
        """
        with self._lock:
            executors = [(name, ref()) for name, ref in sorted(self._executors.items())]
        families = _Families()
        for name, executor in executors:
            if executor is None:
                continue
            try:
                stats = executor.stats()
            except Exception:
                self._report_failure(name)
                continue
            if name in self._failing:
                self._failing.discard(name)
                _log.info("Prometheus: stats() of pool=%r works again", name)
            families.add(name, stats)
        return list(families)

    def _report_failure(self, name: str) -> None:
        """Log a failing stats(): the first time at WARNING, then (every scrape) at DEBUG."""
        first = name not in self._failing
        self._failing.add(name)
        _log.log(
            logging.WARNING if first else logging.DEBUG,
            "Prometheus: stats() of pool=%r raised; its metrics are left out of this scrape",
            name, exc_info=True,
        )


class _Families:
    """The metric families of one scrape; ``add`` puts one executor's samples in them."""

    def __init__(self) -> None:
        self.submitted = CounterMetricFamily(
            "safepool_tasks_submitted",
            "Tasks accepted by submit() or map() (with chunksize, a chunk is one task).",
            labels=["pool"],
        )
        self.tasks = CounterMetricFamily(
            "safepool_tasks",
            "Tasks that finished, by outcome: completed, failed, timed_out, crashed, stopped, "
            "cancelled.",
            labels=["pool", "outcome"],
        )
        self.queued = GaugeMetricFamily(
            "safepool_tasks_queued", "Tasks waiting for a worker now.", labels=["pool"]
        )
        self.running = GaugeMetricFamily(
            "safepool_tasks_running", "Tasks running in a worker now.", labels=["pool"]
        )
        self.workers = GaugeMetricFamily(
            "safepool_workers",
            "Live worker processes, by state: starting, idle, busy, retiring, killing.",
            labels=["pool", "state"],
        )
        self.recycled = CounterMetricFamily(
            "safepool_workers_recycled",
            "Workers replaced, by reason: count, memory, poisoned, crash, timeout, idle, stopped.",
            labels=["pool", "reason"],
        )
        self.seconds = HistogramMetricFamily(
            "safepool_task_duration_seconds",
            "How long tasks that completed or failed ran in their worker (timed-out, stopped "
            "and crashed tasks are not measured).",
            labels=["pool"],
        )

    def add(self, pool: str, stats: Stats) -> None:
        self.submitted.add_metric([pool], stats.submitted)
        for outcome in OUTCOMES:
            self.tasks.add_metric([pool, outcome], getattr(stats, outcome))
        self.queued.add_metric([pool], stats.queued)
        self.running.add_metric([pool], stats.running)
        states = dict.fromkeys(WORKER_STATES, 0)
        for worker in stats.workers:
            states[worker.state] = states.get(worker.state, 0) + 1
        for state, n in states.items():
            self.workers.add_metric([pool, state], n)
        reasons = dict.fromkeys(RECYCLE_REASONS, 0)
        reasons.update(stats.recycled)
        for reason, n in reasons.items():
            self.recycled.add_metric([pool, reason], n)
        histogram = stats.task_seconds
        self.seconds.add_metric(
            [pool],
            [(_le(bound), count) for bound, count in histogram.buckets],
            histogram.sum,
        )

    def __iter__(self) -> Iterator[Metric]:
        yield from (self.submitted, self.tasks, self.queued, self.running, self.workers,
                    self.recycled, self.seconds)


def _le(bound: float) -> str:
    """A bucket bound as the ``le`` label value Prometheus expects."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _executor_of(executor: object) -> Executor:
    if isinstance(executor, ExecutorView):
        return executor._executor
    if isinstance(executor, Executor):
        return executor
    raise TypeError(
        f"expected a safepool.Executor, got {type(executor).__module__}."
        f"{type(executor).__qualname__}: the metrics come from Executor.stats() (make the "
        f"pool with safepool.Executor(...), or use safepool.default_executor())"
    )


def instrument(
    executor: Executor | ExecutorView,
    *,
    registry: CollectorRegistry = REGISTRY,
    pool: str = "default",
) -> StatsCollector:
    """Export ``executor``'s [`stats()`][safepool.Executor.stats] as Prometheus metrics.

    Registers one [`StatsCollector`][safepool.integrations.prometheus.StatsCollector]
    per registry, the first time, and adds ``executor`` to it: every executor
    instrumented on the same registry is exported by that collector, each with
    its own ``pool`` label. Nothing runs per task; ``stats()`` is read when
    the registry is scraped.

    Args:
        executor: the executor to export (a view made by ``options()`` stands
            for its executor). It is held by weak reference.
        registry: where to register; ``prometheus_client.REGISTRY`` by default,
            the one ``start_http_server()`` and ``make_asgi_app()`` serve.
        pool: the ``pool`` label's value, to tell executors apart: a short,
            fixed name.

    Returns:
        The registry's collector: call ``remove(pool)`` on it to stop exporting
        this executor, or ``unregister()`` to remove every safepool metric from
        the registry.

    Raises:
        TypeError: ``executor`` is not a safepool executor.
        ValueError: ``pool`` already names another live executor on this
            registry, or this executor is exported under another name; or
            another collector already exports ``safepool_*`` metrics there.
    """
    target = _executor_of(executor)
    with _by_registry_lock:
        collector = _by_registry.get(registry)
        if collector is not None:
            collector.add(target, pool)
            return collector
        collector = StatsCollector()
        collector.add(target, pool)
        registry.register(collector)  # raises if safepool_* names are taken there
        collector._registry = registry
        _by_registry[registry] = collector
        return collector
