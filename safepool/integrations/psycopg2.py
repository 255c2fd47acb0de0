"""psycopg2: one ``psycopg2.pool.SimpleConnectionPool`` per worker.

```python
from safepool.integrations import psycopg2 as sp_psycopg2

pg = sp_psycopg2.pool("pg", "host=127.0.0.1 dbname=app")

def count_users():
    with safepool.resource("pg").connection().cursor() as cur:
        cur.execute("select count(*) from users")
        return cur.fetchone()[0]
```

This is the fix for a psycopg2 pool created in the parent and inherited
through ``fork``, where two processes share one socket ("lost
synchronization with server"): here every worker opens its own pool. After
every task its connection is rolled back and returned; a broken one is closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from safepool._resources import Resource
from safepool.integrations._pooled import PooledConnections, close, release

__all__ = ["Connections", "pool"]


class Connections(PooledConnections):
    """A worker's psycopg2 pool; ``connection()`` gives the task its connection."""

    def _checkout(self) -> Any:
        return self.pool.getconn()

    def _return(self, connection: Any) -> None:
        import psycopg2

        broken = bool(connection.closed)
        if not broken:
            try:
                connection.rollback()
            except psycopg2.Error:
                broken = True
        self.pool.putconn(connection, close=broken)

    def _close(self) -> None:
        self.pool.closeall()


def _setup(dsn: str, minconn: int, maxconn: int) -> Connections:
    from psycopg2.pool import SimpleConnectionPool

    return Connections(SimpleConnectionPool(minconn, maxconn, dsn))


def pool(
    name: str,
    dsn: str,
    *,
    minconn: int = 1,
    maxconn: int = 1,
    depends_on: Sequence[str] = (),
    poison_on: Sequence[type[BaseException]] = (),
) -> Resource[Connections]:
    """A resource holding one psycopg2 connection pool per worker.

    ``maxconn`` is per worker: the server sees at most workers x maxconn
    connections.
    """
    return Resource(
        name, partial(_setup, dsn, minconn, maxconn),
        teardown=close, before=release, after=release,
        depends_on=depends_on, poison_on=poison_on,
    )
