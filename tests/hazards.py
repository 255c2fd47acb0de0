"""Reusable parts of the "what goes wrong without per-worker resources" proofs.

``tests/test_fork_hazards.py`` uses these with plain ``multiprocessing`` fork to show each failure;
the safepool-side tests can use the same task functions and helpers to show that per-worker
resources do not fail. Client libraries are imported lazily, inside the functions that need them,
so this module imports with none of them installed.

Contents:

- ``run_forked``: run a function in N forked children at once, collect what each returned or
  raised, kill the ones that hang (bounded), and leave no process or fd behind;
- PostgreSQL: DSN tweaks, tagged-row tables, per-role/database/application connection counts,
  backend termination, a role with a connection limit;
- MariaDB: connection counts from ``information_schema.PROCESSLIST``, a user with
  ``MAX_USER_CONNECTIONS``;
- task functions (module level, so they also pickle by reference for a process pool):
  ``check_own_rows``, ``pool_check_own_rows``, ``add_item``, ``get_label``, ``backend_pid``,
  ``engine_per_task``, ``mariadb_connection_per_task``, ``mqtt_publish``, ``kafka_produce``,
  and ``call_reporting`` to turn any exception into a picklable result.

Names of tables, roles and users made here start with ``safepool_hz_`` and end with a random
suffix, so concurrent runs never collide; the fixtures in the test module drop them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import re
import select
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# --- running a function in forked children ----------------------------------------------------


@dataclass
class ChildOutcome:
    """What one forked child did.

    ``status`` is ``"returned"`` (``value`` holds the return value), ``"raised"`` (``error``
    holds ``"module.Type: message"``), ``"hung"`` (no answer before the deadline; it was killed)
    or ``"died"`` (it exited without answering; ``exitcode`` says how).
    """

    index: int
    status: str
    value: Any = None
    error: str = ""
    exitcode: int | None = None

    def __str__(self) -> str:
        detail = {"returned": repr(self.value), "raised": self.error}.get(
            self.status, f"exit code {self.exitcode}"
        )
        return f"child {self.index}: {self.status}: {detail}"


def describe_exception(exc: BaseException) -> str:
    """``"module.Type: message"``, e.g.
    ``"psycopg2.DatabaseError: error with status PGRES_TUPLES_OK and no message from the libpq"``.
    """
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {str(exc).strip()}"


def _child_main(
    target: Callable[..., Any], args: tuple[Any, ...], conn: Any, start_r: int, start_w: int
) -> None:
    os.close(start_w)  # the parent's close of its copy is the start signal (EOF on start_r)
    select.select([start_r], [], [], 30)
    try:
        result: tuple[str, Any] = ("returned", target(*args))
    except BaseException as exc:  # report everything, KeyboardInterrupt included
        result = ("raised", describe_exception(exc))
    try:
        conn.send(result)
    except Exception as exc:  # the value did not pickle
        conn.send(("raised", f"(result not picklable) {describe_exception(exc)}"))


def run_forked(
    target: Callable[..., Any],
    arg_tuples: Sequence[tuple[Any, ...]],
    *,
    timeout: float = 10.0,
    grace: float | None = None,
) -> list[ChildOutcome]:
    """Fork one child per argument tuple (``multiprocessing`` "fork" context), release them all
    at the same moment, and run ``target(*args)`` in each. Objects in ``args`` are *inherited*
    through fork, not pickled: that is the point.

    Waits at most ``timeout`` seconds in all; with ``grace``, at most ``grace`` seconds after the
    first child answers. Children that have not answered by then are SIGKILLed and reported as
    ``"hung"``. Every child is reaped and every pipe closed before this returns.
    """
    ctx = multiprocessing.get_context("fork")
    start_r, start_w = os.pipe()
    children: list[tuple[Any, Any]] = []
    outcomes: dict[int, ChildOutcome] = {}
    try:
        for index, args in enumerate(arg_tuples):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child_main,
                args=(target, tuple(args), writer, start_r, start_w),
                name=f"hazard-child-{index}",
                daemon=True,
            )
            children.append((proc, reader))
            proc.start()
            writer.close()
        os.close(start_w)
        start_w = -1
        deadline = time.monotonic() + timeout
        pending = {reader: index for index, (_, reader) in enumerate(children)}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for reader in multiprocessing.connection.wait(list(pending), timeout=left):
                index = pending.pop(reader)
                try:
                    status, payload = reader.recv()
                except EOFError:
                    outcomes[index] = ChildOutcome(index, "died")
                    continue
                if status == "returned":
                    outcomes[index] = ChildOutcome(index, status, value=payload)
                else:
                    outcomes[index] = ChildOutcome(index, status, error=payload)
                if grace is not None:
                    deadline = min(deadline, time.monotonic() + grace)
    finally:
        if start_w >= 0:
            os.close(start_w)
        os.close(start_r)
        for index, (proc, reader) in enumerate(children):
            if proc.pid is None:  # never started
                reader.close()
                continue
            proc.join(1.0 if index in outcomes else 0)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
            outcome = outcomes.setdefault(index, ChildOutcome(index, "hung"))
            outcome.exitcode = proc.exitcode
            proc.close()
            reader.close()
    return [outcomes[index] for index in range(len(children))]


def call_reporting(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Run ``fn(*args)``; return ``("ok", value)`` or ``("error", "module.Type: message")``.

    For process pools whose result transport would choke on a driver's exception object.
    """
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("error", describe_exception(exc))


def unique_name(kind: str) -> str:
    """``safepool_hz_<kind>_<12 hex>``: a table, role or user name no other run will use."""
    return f"safepool_hz_{kind}_{uuid.uuid4().hex[:12]}"


_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ident(name: str) -> str:
    """A name made by ``unique_name`` (checked), double-quoted for SQL."""
    if not _NAME.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes
    (the last falsy value is returned). For server-side state that changes asynchronously, such
    as a backend going away after its client closed the socket."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- PostgreSQL ---------------------------------------------------------------------------------


def with_params(dsn: str, **params: object) -> str:
    """``dsn`` with libpq keywords added or overridden (in a libpq DSN the last one wins)."""
    parts = [dsn]
    for key, value in params.items():
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{text}'")
    return " ".join(parts)


@contextlib.contextmanager
def pg_admin(dsn: str) -> Iterator[Any]:
    """An autocommit psycopg2 cursor on ``dsn``, closed on exit."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def create_tagged_table(dsn: str, table: str, tags: Sequence[str], rows_per_tag: int = 3) -> None:
    """Create ``table (tag text, n int)`` holding rows ``(tag, 0..rows_per_tag-1)`` per tag."""
    rows = [(tag, n) for tag in tags for n in range(rows_per_tag)]
    with pg_admin(dsn) as cur:
        cur.execute(f"CREATE TABLE {_ident(table)} (tag text NOT NULL, n int NOT NULL)")
        cur.executemany(f"INSERT INTO {_ident(table)} (tag, n) VALUES (%s, %s)", rows)


def drop_table(dsn: str, table: str) -> None:
    """Drop ``table``, waiting at most 10 s for a backend that still uses it to go away."""
    with pg_admin(dsn) as cur:
        cur.execute("SET lock_timeout = '10s'")
        cur.execute(f"DROP TABLE IF EXISTS {_ident(table)}")


class WrongRowsError(AssertionError):
    """A query returned rows that belong to another task: replies were crossed."""


def check_own_rows(conn: Any, table: str, tag: str, queries: int, rows_per_tag: int = 3) -> int:
    """Task: run ``queries`` queries on DB-API connection ``conn`` (psycopg2 or psycopg 3), each
    selecting the rows tagged ``tag`` from ``table`` (see ``create_tagged_table``), and check that
    each returns exactly those rows. Raises ``WrongRowsError`` on the first wrong answer; returns
    ``queries``. Many processes doing this on one shared connection cross their replies."""
    expected = [(tag, n) for n in range(rows_per_tag)]
    sql = f"SELECT tag, n FROM {_ident(table)} WHERE tag = %s ORDER BY n"
    cur = conn.cursor()
    try:
        for i in range(queries):
            cur.execute(sql, (tag,))
            got = [tuple(row) for row in cur.fetchall()]
            if got != expected:
                raise WrongRowsError(f"query {i} for tag {tag!r} returned {got!r}")
    finally:
        with contextlib.suppress(Exception):
            cur.close()
    if hasattr(conn, "commit"):
        conn.commit()
    return queries


def pool_check_own_rows(pool: Any, table: str, tag: str, queries: int) -> int:
    """Task: ``check_own_rows`` on a connection taken from a ``psycopg2.pool`` pool, given back
    only on success (giving back a broken connection makes the pool roll it back, which can
    block on a desynchronised socket)."""
    conn = pool.getconn()
    done = check_own_rows(conn, table, tag, queries)
    pool.putconn(conn)
    return done


def connect_and_check_own_rows(dsn: str, table: str, tag: str, queries: int) -> int:
    """Task (the control): ``check_own_rows`` on a psycopg2 connection made here, in the process
    that uses it, and closed afterwards."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        return check_own_rows(conn, table, tag, queries)
    finally:
        conn.close()


def backend_pid(conn_or_session: Any) -> int:
    """Task: the server process id behind a psycopg2/psycopg connection or a SQLAlchemy
    ``Session``/``Connection`` (starts a transaction on a Session, as any query would)."""
    if hasattr(conn_or_session, "scalar"):  # SQLAlchemy Session or Connection
        from sqlalchemy import text

        return int(conn_or_session.scalar(text("SELECT pg_backend_pid()")))
    cur = conn_or_session.cursor()
    try:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])
    finally:
        cur.close()


def terminate_backend(admin_dsn: str, pid: int, wait_ms: int = 5000) -> bool:
    """Have the server end backend ``pid`` (as an admin/failover would) and wait up to
    ``wait_ms`` for it to be gone (PostgreSQL 14+). True if it was signalled."""
    with pg_admin(admin_dsn) as cur:
        cur.execute("SELECT pg_terminate_backend(%s, %s)", (pid, wait_ms))
        return bool(cur.fetchone()[0])


def postgres_connection_count(
    admin_dsn: str,
    *,
    user: str | None = None,
    database: str | None = None,
    application_name: str | None = None,
) -> int:
    """How many client backends ``pg_stat_activity`` shows matching every filter given (user,
    database, application_name), not counting the connection doing the counting. For
    assertions like "connections never exceed workers x pool size"."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    args: list[str] = []
    for column, value in (
        ("usename", user),
        ("datname", database),
        ("application_name", application_name),
    ):
        if value is not None:
            sql += f" AND {column} = %s"
            args.append(value)
    with pg_admin(admin_dsn) as cur:
        cur.execute(sql, args)
        return int(cur.fetchone()[0])


def terminate_backends(
    admin_dsn: str, *, user: str | None = None, application_name: str | None = None
) -> int:
    """Terminate (and wait for) every backend of ``user`` and/or ``application_name``."""
    if user is None and application_name is None:
        raise ValueError("name a user or an application_name")
    sql = (
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    )
    args: list[str] = []
    if user is not None:
        sql += " AND usename = %s"
        args.append(user)
    if application_name is not None:
        sql += " AND application_name = %s"
        args.append(application_name)
    with pg_admin(admin_dsn) as cur:
        cur.execute(sql, args)
        return len(cur.fetchall())


def create_limited_role(admin_dsn: str, role: str, limit: int) -> None:
    """A LOGIN role allowed ``limit`` concurrent connections (trust auth on loopback lets it in
    without a password). Connect as it with ``with_params(dsn, user=role)``."""
    with pg_admin(admin_dsn) as cur:
        cur.execute(f"CREATE ROLE {_ident(role)} LOGIN CONNECTION LIMIT {int(limit)}")


def drop_role(admin_dsn: str, role: str) -> None:
    """Terminate the role's backends, then drop it."""
    terminate_backends(admin_dsn, user=role)
    with pg_admin(admin_dsn) as cur:
        cur.execute(f"DROP ROLE IF EXISTS {_ident(role)}")


def sqlalchemy_engine(dsn: str, **kwargs: Any) -> Any:
    """A SQLAlchemy 2 engine over psycopg2 for a libpq DSN string."""
    import functools

    import psycopg2
    from sqlalchemy import create_engine

    return create_engine(
        "postgresql+psycopg2://", creator=functools.partial(psycopg2.connect, dsn), **kwargs
    )


#: Engines/connections that ``engine_per_task`` and ``mariadb_connection_per_task`` keep alive
#: in the process that ran them, like a cache or a registry that holds on to them would.
LEAKED: list[Any] = []


def engine_per_task(dsn: str) -> int:
    """Task (the anti-pattern): make a new SQLAlchemy engine for this task, query through it,
    and never dispose it; the engine (so its pooled connection) stays referenced in ``LEAKED``.
    Returns the backend pid. Each call in a long-lived worker holds one more connection."""
    from sqlalchemy import text

    engine = sqlalchemy_engine(dsn)
    LEAKED.append(engine)
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")))


def dispose_leaked() -> None:
    """Close whatever ``engine_per_task``/``mariadb_connection_per_task`` left in ``LEAKED``."""
    while LEAKED:
        obj = LEAKED.pop()
        with contextlib.suppress(Exception):
            (obj.dispose if hasattr(obj, "dispose") else obj.close)()


# --- SQLAlchemy ORM -----------------------------------------------------------------------------


def make_item_model(table: str) -> tuple[Any, type]:
    """A fresh declarative ``(metadata, Item)`` mapped to ``table`` (``id`` int primary key,
    ``label`` text). Use ``metadata.create_all(engine)`` / ``drop_all``."""
    from sqlalchemy import Integer, String
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    _ident(table)

    class Base(DeclarativeBase):
        pass

    item = type(
        "Item",
        (Base,),
        {
            "__tablename__": table,
            "id": mapped_column(Integer, primary_key=True, autoincrement=False),
            "label": mapped_column(String(100), nullable=False),
        },
    )
    return Base.metadata, item


def add_item(session: Any, item_cls: type, item_id: int, label: str) -> int:
    """Task: add one ``Item`` and flush (so a duplicate id raises ``IntegrityError`` here); the
    caller (or the worker's per-task session reset) decides commit/rollback."""
    session.add(item_cls(id=item_id, label=label))
    session.flush()
    return item_id


def get_label(session: Any, item_cls: type, item_id: int) -> str | None:
    """Task: read one ``Item``'s label (None if absent) with a query."""
    from sqlalchemy import select

    return session.scalar(select(item_cls.label).where(item_cls.id == item_id))


# --- MariaDB ------------------------------------------------------------------------------------


@contextlib.contextmanager
def mariadb_admin(params: dict[str, Any]) -> Iterator[Any]:
    """An autocommit PyMySQL cursor for ``params``, closed on exit."""
    import pymysql

    conn = pymysql.connect(**params, autocommit=True, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def mariadb_connection_count(params: dict[str, Any], user: str) -> int:
    """How many connections ``information_schema.PROCESSLIST`` shows for ``user``, not counting
    the connection doing the counting."""
    with mariadb_admin(params) as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE USER = %s AND ID <> CONNECTION_ID()",
            (user,),
        )
        return int(cur.fetchone()[0])


def create_mariadb_user(params: dict[str, Any], user: str, max_connections: int = 0) -> None:
    """A user with no password and all rights on ``test``; ``max_connections`` > 0 sets
    ``MAX_USER_CONNECTIONS``. Connect as it with ``{**params, "user": user}``."""
    _ident(user)
    with mariadb_admin(params) as cur:
        cur.execute(f"CREATE USER '{user}'@'%' WITH MAX_USER_CONNECTIONS {int(max_connections)}")
        cur.execute(f"GRANT ALL PRIVILEGES ON test.* TO '{user}'@'%'")


def drop_mariadb_user(params: dict[str, Any], user: str) -> None:
    """Kill the user's connections, then drop it."""
    _ident(user)
    with mariadb_admin(params) as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        for (thread_id,) in cur.fetchall():
            with contextlib.suppress(Exception):
                cur.execute(f"KILL {int(thread_id)}")
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def mariadb_connection_per_task(params: dict[str, Any]) -> int:
    """Task (the anti-pattern): open a new PyMySQL connection for this task, use it, keep it
    referenced in ``LEAKED``. Returns the connection id."""
    import pymysql

    conn = pymysql.connect(**params, connect_timeout=5)
    LEAKED.append(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


# --- clients with their own network threads -----------------------------------------------------


def mqtt_client(address: tuple[str, int], client_id: str, timeout: float = 5.0) -> Any:
    """A paho-mqtt 2 client connected to ``address`` with its network thread started
    (``loop_start``); returns once the broker's CONNACK arrived. Stop it with ``mqtt_close``."""
    import threading

    import paho.mqtt.client as mqtt

    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_connect = lambda *_args: connected.set()
    client.connect(address[0], address[1], keepalive=30)
    client.loop_start()
    if not connected.wait(timeout):
        mqtt_close(client)
        raise TimeoutError(f"no CONNACK from the MQTT broker at {address} within {timeout}s")
    return client


def mqtt_close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


def mqtt_publish(client: Any, topic: str, payload: bytes, timeout: float) -> tuple[bool, float]:
    """Task: publish at QoS 1 and wait up to ``timeout`` s for the broker's PUBACK. Returns
    ``(published, seconds waited)``. Needs the client's network thread to be running in *this*
    process: a forked child has the client object but not the thread, so it never publishes."""
    started = time.monotonic()
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=timeout)
    return info.is_published(), time.monotonic() - started


def closed_loopback_port() -> int:
    """A loopback TCP port nothing listens on right now (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kafka_producer(port: int, message_timeout_ms: int = 1000) -> Any:
    """A confluent-kafka ``Producer`` aimed at 127.0.0.1:``port`` (no broker needed) that
    gives up on a message after ``message_timeout_ms``, logging nothing."""
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{port}",
            "message.timeout.ms": message_timeout_ms,
            "socket.connection.setup.timeout.ms": 1000,
            "log_level": 0,
        }
    )


def kafka_produce(producer: Any, topic: str, timeout: float) -> tuple[int, list[str], float]:
    """Task: produce one message, then ``flush(timeout)``. Returns ``(messages still queued,
    delivery-report error texts, seconds flush took)``. With no broker the delivery report is
    an error (``Local: Message timed out``) once ``message.timeout.ms`` passes; that report is
    made by librdkafka's own threads, which a forked child does not have."""
    reports: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        reports.append(str(err.str()) if err is not None else "delivered")

    producer.produce(topic, b"safepool hazard", on_delivery=on_delivery)
    started = time.monotonic()
    remaining = producer.flush(timeout)
    return int(remaining), reports, time.monotonic() - started
