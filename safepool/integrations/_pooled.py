"""The shared shape of the psycopg and psycopg2 integrations: a pool per worker,
one connection checked out per task, rolled back and returned after it."""

from __future__ import annotations

from typing import Any

__all__ = ["PooledConnections"]


class PooledConnections:
    """What a task gets from ``safepool.resource(name)``.

    Attributes:
        pool: the worker's connection pool.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._connection: Any = None

    def connection(self) -> Any:
        """This task's connection, checked out of the pool on first use.

        It is rolled back and returned to the pool when the task ends,
        whatever the task did; do not close it or return it yourself.
        """
        if self._connection is None:
            self._connection = self._checkout()
        return self._connection

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._return(connection)

    def _checkout(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _return(self, connection: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def release(handle: PooledConnections, *_: Any) -> None:
    """The ``before``/``after`` hook: roll back and return the task's connection."""
    handle._release()


def close(handle: PooledConnections) -> None:
    """The teardown: return the connection, then close the pool."""
    try:
        handle._release()
    finally:
        handle._close()
