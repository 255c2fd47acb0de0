"""SQLAlchemy 2.x: one engine per worker, a fresh Session for every task.

```python
from safepool.integrations import sqlalchemy as sp_sqlalchemy

db = sp_sqlalchemy.database("db", "postgresql+psycopg2://app@127.0.0.1/app")

def count_users():
    session = safepool.resource("db").session   # this task's own Session
    return session.scalar(text("select count(*) from users"))

with safepool.Executor(4, resources=[db]) as pool: ...
```

The engine is created in each worker (never inherited from the parent),
connected once during setup so that a wrong URL fails as a
``ResourceSetupError``, and disposed when the worker exits on purpose.
Before and after every task the Session is rolled back and closed, so a
task that failed mid-transaction leaves nothing behind for the next one (no
``PendingRollbackError``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from safepool._resources import Outcome, Resource

__all__ = ["Database", "database"]


class Database:
    """What a task gets from ``safepool.resource(name)``.

    Attributes:
        engine: the worker's ``sqlalchemy.Engine``.
        session: the ``Session`` of the running task (``None`` between tasks).
    """

    def __init__(self, engine: Any, session_factory: Any) -> None:
        self.engine = engine
        self._session_factory = session_factory
        self.session: Any = None

    def _begin(self) -> None:
        self._end()
        self.session = self._session_factory()

    def _end(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                session.rollback()
            finally:
                session.close()


def _setup(
    url: str, engine_kwargs: Mapping[str, Any], session_kwargs: Mapping[str, Any]
) -> Database:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    options = {"pool_size": 1, "max_overflow": 0, "pool_pre_ping": True, **engine_kwargs}
    engine = create_engine(url, **options)
    try:
        with engine.connect():  # create_engine alone does not connect: check the URL now
            pass
    except BaseException:
        engine.dispose()
        raise
    return Database(engine, sessionmaker(engine, **session_kwargs))


def _before(db: Database) -> None:
    db._begin()


def _after(db: Database, outcome: Outcome) -> None:
    db._end()


def _teardown(db: Database) -> None:
    try:
        db._end()
    finally:
        db.engine.dispose()


def database(
    name: str,
    url: str,
    *,
    engine_kwargs: Mapping[str, Any] | None = None,
    session_kwargs: Mapping[str, Any] | None = None,
    depends_on: Sequence[str] = (),
    poison_on: Sequence[type[BaseException]] = (),
) -> Resource[Database]:
    """A resource holding one SQLAlchemy engine per worker and a Session per task.

    Args:
        name: the resource name tasks use.
        url: the database URL.
        engine_kwargs: passed to ``create_engine``. The defaults give each
            worker a single pooled connection (``pool_size=1, max_overflow=0``),
            since a worker runs one task at a time, and check it before use
            (``pool_pre_ping=True``): the server sees at most one connection
            per worker.
        session_kwargs: passed to ``sessionmaker``.
        depends_on: other resources to set up first.
        poison_on: exception types after which the worker is recycled.
    """
    return Resource(
        name,
        partial(_setup, url, dict(engine_kwargs or {}), dict(session_kwargs or {})),
        teardown=_teardown,
        before=_before,
        after=_after,
        depends_on=depends_on,
        poison_on=poison_on,
    )
