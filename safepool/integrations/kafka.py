"""confluent-kafka: one ``Producer`` per worker, flushed when the worker exits.

A ``Producer`` runs librdkafka threads. Created in the parent and inherited
through ``fork``, it has no threads in the child, so ``flush()`` never
delivers. Created here, in each worker, it works; delivery callbacks are
served after every task, and the teardown flushes what is still queued.

```python
from safepool.integrations import kafka as sp_kafka

events = sp_kafka.producer("events", {"bootstrap.servers": "127.0.0.1:9092"})

def publish(payload):
    safepool.resource("events").produce("events", payload)
```
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from safepool._resources import Outcome, Resource

__all__ = ["producer"]

_log = logging.getLogger("safepool")


def _setup(config: Mapping[str, Any]) -> Any:
    from confluent_kafka import Producer

    return Producer(dict(config))


def _after(producer: Any, outcome: Outcome) -> None:
    producer.poll(0)  # serve delivery callbacks of this task's messages


def _teardown(producer: Any, flush_timeout: float) -> None:
    left = producer.flush(flush_timeout)
    if left:
        _log.warning("%d Kafka message(s) were not delivered before the worker exited", left)


def producer(
    name: str,
    config: Mapping[str, Any],
    *,
    flush_timeout: float = 5.0,
    depends_on: Sequence[str] = (),
    poison_on: Sequence[type[BaseException]] = (),
) -> Resource[Any]:
    """A resource holding one ``confluent_kafka.Producer`` per worker.

    Args:
        config: the librdkafka configuration.
        flush_timeout: how long the teardown waits for queued messages; keep it
            below the executor's ``exit_timeout`` (10 s by default).
    """
    return Resource(
        name, partial(_setup, dict(config)),
        teardown=partial(_teardown, flush_timeout=flush_timeout), after=_after,
        depends_on=depends_on, poison_on=poison_on,
    )
