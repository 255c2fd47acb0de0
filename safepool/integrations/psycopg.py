"""psycopg 3: one ``psycopg_pool.ConnectionPool`` per worker.

```python
from safepool.integrations import psycopg as sp_psycopg

pg = sp_psycopg.pool("pg", "host=127.0.0.1 dbname=app", max_size=2)

def add_user(name):
    conn = safepool.resource("pg").connection()   # checked out for this task
    conn.execute("insert into users (name) values (%s)", (name,))
    conn.commit()
```

The pool is opened in each worker and closed when the worker exits on
purpose. After every task its connection is rolled back and returned to the
pool; a broken connection is discarded by the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from safepool._resources import Resource
from safepool.integrations._pooled import PooledConnections, close, release

__all__ = ["Connections", "pool"]


class Connections(PooledConnections):
    """A worker's psycopg pool; ``connection()`` gives the task its connection."""

    def _checkout(self) -> Any:
        return self.pool.getconn()

    def _return(self, connection: Any) -> None:
        try:
            if not connection.closed:
                connection.rollback()
        finally:
            self.pool.putconn(connection)  # the pool discards a broken connection

    def _close(self) -> None:
        self.pool.close()


def _setup(conninfo: str, min_size: int, max_size: int, kwargs: Mapping[str, Any]) -> Connections:
    from psycopg_pool import ConnectionPool

    connection_pool = ConnectionPool(
        conninfo, min_size=min_size, max_size=max_size, open=True, **kwargs
    )
    connection_pool.wait()  # fail in setup, not in the first task, if the server is unreachable
    return Connections(connection_pool)


def pool(
    name: str,
    conninfo: str,
    *,
    min_size: int = 1,
    max_size: int = 1,
    pool_kwargs: Mapping[str, Any] | None = None,
    depends_on: Sequence[str] = (),
    poison_on: Sequence[type[BaseException]] = (),
) -> Resource[Connections]:
    """A resource holding one psycopg connection pool per worker.

    ``max_size`` is per worker: the server sees at most workers x max_size
    connections. ``pool_kwargs`` go to ``psycopg_pool.ConnectionPool``.
    """
    return Resource(
        name,
        partial(_setup, conninfo, min_size, max_size, dict(pool_kwargs or {})),
        teardown=close, before=release, after=release,
        depends_on=depends_on, poison_on=poison_on,
    )
