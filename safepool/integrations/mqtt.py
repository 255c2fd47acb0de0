"""paho-mqtt: one client per worker, with its network thread (``loop_start``).

A client whose ``loop_start()`` thread was started in the parent has no such
thread in a ``fork`` child: ``publish(...).wait_for_publish()`` never
completes. Created here, in each worker, it works; the teardown stops the
loop and disconnects.

```python
from safepool.integrations import mqtt as sp_mqtt

broker = sp_mqtt.client("mqtt", "127.0.0.1", 1883)

def report(value):
    info = safepool.resource("mqtt").publish("metrics", str(value), qos=1)
    info.wait_for_publish(timeout=5)
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from safepool._resources import Resource

__all__ = ["client"]


def _setup(host: str, port: int, keepalive: int, client_kwargs: Mapping[str, Any]) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    kwargs = dict(client_kwargs)
    kwargs.setdefault("callback_api_version", CallbackAPIVersion.VERSION2)
    client = mqtt.Client(**kwargs)
    client.connect(host, port, keepalive)
    client.loop_start()
    return client


def _teardown(client: Any) -> None:
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def client(
    name: str,
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    keepalive: int = 60,
    client_kwargs: Mapping[str, Any] | None = None,
    depends_on: Sequence[str] = (),
    poison_on: Sequence[type[BaseException]] = (),
) -> Resource[Any]:
    """A resource holding one connected paho-mqtt client per worker.

    ``client_kwargs`` go to ``paho.mqtt.client.Client`` (the callback API
    defaults to version 2).
    """
    return Resource(
        name, partial(_setup, host, port, keepalive, dict(client_kwargs or {})),
        teardown=_teardown, depends_on=depends_on, poison_on=poison_on,
    )
