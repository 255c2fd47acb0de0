"""Warning, before workers are forked, about what in the parent will not survive ``fork``.

Only an explicit ``mp_context="fork"`` gets here. A forked worker is a copy of the
parent at that instant: other threads are gone (a lock one of them held stays locked),
and every open socket is shared with the parent. That breaks database connections
(two processes in one session) and clients whose work is done by threads (Kafka, MQTT).

The check runs once per ``Executor``: live threads, then one pass over
``gc.get_objects()`` looking for instances of well-known client types. A library is
only looked at if the application has already imported it; this module imports none
of them. Anything that goes wrong while looking at one object is ignored: the guard
may miss a hazard, but never makes ``Executor()`` fail.
"""

from __future__ import annotations

import gc
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from multiprocessing.context import BaseContext
from typing import Any

from safepool._context import THREAD_PREFIX
from safepool._errors import ForkWarning

__all__ = ["fork_hazards", "warn_if_fork_unsafe"]

#: How many objects of one kind a warning names before it says "and N more".
MAX_NAMED = 5

_PREFIX = "safepool will start workers with 'fork' while "
_NO_FORK = "or drop mp_context=\"fork\" (the default start method is safe)"

#: kind -> (what was found, for "N <what>: <objects>", then consequence and fix).
_TEXTS: dict[str, tuple[str, str]] = {
    "sqlalchemy": (
        "SQLAlchemy engine(s) hold open pooled connections",
        "A forked worker inherits those connections' sockets, so parent and worker share "
        "one database session (crossed results, 'lost synchronization with server', SSL "
        "errors). Fix: call engine.dispose(close=False) in the worker's initializer, or "
        "create the engine in each worker with the resource "
        f"safepool.integrations.sqlalchemy.database(...), {_NO_FORK}.",
    ),
    "psycopg2": (
        "psycopg2 connection(s) or pool(s) are open",
        "A forked worker inherits each connection's socket, so two processes talk over one "
        "PostgreSQL session ('lost synchronization with server', another process's rows). "
        "Fix: open connections in each worker, with the resource "
        "safepool.integrations.psycopg2.pool(...), or close them before creating the "
        f"Executor, {_NO_FORK}.",
    ),
    "psycopg": (
        "psycopg connection(s) or pool(s) are open",
        "A forked worker inherits each connection's socket, so two processes talk over one "
        "PostgreSQL session, and a pool's maintenance threads do not exist in the worker. "
        "Fix: open connections in each worker, with the resource "
        "safepool.integrations.psycopg.pool(...), or close them before creating the "
        f"Executor, {_NO_FORK}.",
    ),
    "kafka": (
        "confluent-kafka client(s) are open",
        "librdkafka's threads do not survive fork: in a worker, flush() hangs and delivery "
        "reports never come, poll() and consume() get nothing. Fix: create the producer in "
        "each worker with the resource safepool.integrations.kafka.producer(...) (a Consumer "
        f"or AdminClient in a @safepool.worker_resource), {_NO_FORK}.",
    ),
    "mqtt": (
        "paho-mqtt client(s) have their network loop thread running (loop_start())",
        "That thread does not exist in a forked worker, so publish(...).wait_for_publish() "
        "never completes there, and the worker shares the parent's socket to the broker. "
        "Fix: create the client in each worker with the resource "
        f"safepool.integrations.mqtt.client(...), {_NO_FORK}.",
    ),
}

#: (module, attribute, kind) of the types to look for; "-record" kinds are only used to
#: know which raw connections an SQLAlchemy pool owns.
_WATCHED: tuple[tuple[str, str, str], ...] = (
    ("sqlalchemy.engine.base", "Engine", "sqlalchemy"),
    ("sqlalchemy.pool.base", "_ConnectionRecord", "sqlalchemy-record"),
    ("psycopg2.extensions", "connection", "psycopg2"),
    ("psycopg2.pool", "AbstractConnectionPool", "psycopg2-pool"),
    ("psycopg", "Connection", "psycopg"),
    ("psycopg", "AsyncConnection", "psycopg"),
    ("psycopg_pool", "ConnectionPool", "psycopg-pool"),
    ("psycopg_pool", "AsyncConnectionPool", "psycopg-pool"),
    ("confluent_kafka", "Producer", "kafka"),
    ("confluent_kafka", "Consumer", "kafka"),
    ("confluent_kafka.admin", "AdminClient", "kafka"),
    ("paho.mqtt.client", "Client", "mqtt"),
)


def warn_if_fork_unsafe(context: BaseContext, stacklevel: int) -> None:
    """With a fork context, warn (`ForkWarning`) about each kind of hazard in the parent.

    ``stacklevel`` is counted from the caller, as for `warnings.warn`.
    """
    if context.get_start_method() != "fork":
        return
    for message in fork_hazards():
        warnings.warn(message, ForkWarning, stacklevel=stacklevel + 1)


def fork_hazards() -> list[str]:
    """The warning texts for what in this process would not survive a fork (may be empty)."""
    messages = []
    threads = _other_threads()
    if threads:
        messages.append(
            f"{_PREFIX}{len(threads)} other thread(s) are alive ({', '.join(threads)}); a "
            "lock one of them holds at fork time stays locked in the worker for ever "
            "(logging, stdout, DB drivers). Use the default start method "
            "(forkserver/spawn) unless you need fork."
        )
    try:
        found = _scan()
        if found:
            # Objects in unreachable cycles are also in gc.get_objects(); confirm with
            # what is still alive after a collection (only paid when something was found).
            gc.collect()
            found = _scan()
    except Exception:
        found = {}
    for kind, (what, advice) in _TEXTS.items():
        names = found.get(kind)
        if names:
            messages.append(f"{_PREFIX}{len(names)} {what}: {_listing(names)}. {advice}")
    return messages


def _other_threads() -> list[str]:
    current = threading.current_thread()
    return sorted(
        t.name
        for t in threading.enumerate()
        if t is not current and not t.name.startswith(THREAD_PREFIX)
    )


def _listing(names: list[str]) -> str:
    shown = "; ".join(names[:MAX_NAMED])
    if len(names) > MAX_NAMED:
        shown += f"; and {len(names) - MAX_NAMED} more"
    return shown


def _watched_types() -> list[tuple[type, str]]:
    """The watched types of the libraries already imported (never imports one)."""
    types = []
    for module_name, attribute, kind in _WATCHED:
        module = sys.modules.get(module_name)
        cls = getattr(module, attribute, None) if module is not None else None
        if isinstance(cls, type):
            types.append((cls, kind))
    return types


def _collect(watched: list[tuple[type, str]]) -> dict[str, list[Any]]:
    """The gc-tracked instances of watched types, grouped by kind.

    The distinct types of all objects are taken first (at C speed); only when one of
    them is watched are the objects themselves gone through.
    """
    bases = tuple(cls for cls, _ in watched)
    objects = gc.get_objects()
    kinds: dict[type, str] = {}
    for cls in set(map(type, objects)):
        try:
            if issubclass(cls, bases):
                kinds[cls] = next(k for base, k in watched if issubclass(cls, base))
        except Exception:
            continue
    groups: dict[str, list[Any]] = {}
    if kinds:
        for obj in [obj for obj in objects if type(obj) in kinds]:
            groups.setdefault(kinds[type(obj)], []).append(obj)
    return groups


def _scan() -> dict[str, list[str]]:
    """kind -> a description of each hazardous object found."""
    watched = _watched_types()
    if not watched:
        return {}
    groups = _collect(watched)
    owned = _owned_connections(groups)
    found: dict[str, list[str]] = {}

    def describe(kind: str, objects: Iterable[Any], probe: Callable[[Any], str | None]) -> None:
        for obj in objects:
            if id(obj) in owned:
                continue
            try:
                text = probe(obj)
            except Exception:
                continue
            if text:
                found.setdefault(kind, []).append(text)

    describe("sqlalchemy", _distinct_engines(groups.get("sqlalchemy", ())),
             _engine_probe(groups.get("sqlalchemy-record", ())))
    describe("psycopg2", groups.get("psycopg2-pool", ()), _psycopg2_pool)
    describe("psycopg2", groups.get("psycopg2", ()), _psycopg2_connection)
    describe("psycopg", groups.get("psycopg-pool", ()), _psycopg_pool)
    describe("psycopg", groups.get("psycopg", ()), _psycopg_connection)
    describe("kafka", groups.get("kafka", ()), _kafka_client)
    describe("mqtt", groups.get("mqtt", ()), _mqtt_client)
    return found


def _owned_connections(groups: dict[str, list[Any]]) -> set[int]:
    """ids of raw connections held by a pool, which is named instead of them."""
    owned: set[int] = set()
    for record in groups.get("sqlalchemy-record", ()):
        connection = getattr(record, "dbapi_connection", None)
        if connection is not None:
            owned.add(id(connection))
    for pool in groups.get("psycopg2-pool", ()):
        try:
            owned.update(id(c) for c in [*pool._pool, *pool._used.values()])
        except Exception:
            pass
    for pool in groups.get("psycopg-pool", ()):  # idle connections
        try:
            owned.update(id(c) for c in list(pool._pool))
        except Exception:
            pass
    for connection in groups.get("psycopg", ()):
        if getattr(connection, "_pool", None) is not None:  # set by psycopg_pool on getconn()
            owned.add(id(connection))
    return owned


# --- SQLAlchemy -------------------------------------------------------------------------


def _distinct_engines(engines: Iterable[Any]) -> list[Any]:
    """One engine per pool (``engine.execution_options()`` makes engines sharing a pool)."""
    seen: set[int] = set()
    distinct = []
    for engine in engines:
        pool = getattr(engine, "pool", None)
        if pool is not None and id(pool) not in seen:
            seen.add(id(pool))
            distinct.append(engine)
    return distinct


def _engine_probe(records: Iterable[Any]) -> Callable[[Any], str | None]:
    """The engine probe, counting connections from pool records for pools without counters
    (SingletonThreadPool, StaticPool, NullPool)."""
    by_pool: dict[int, tuple[int, int]] = {}
    for record in records:
        try:
            if record.dbapi_connection is None:
                continue
            pool = record._ConnectionRecord__pool
            out, idle = by_pool.get(id(pool), (0, 0))
            if record.fairy_ref is not None:
                out += 1
            else:
                idle += 1
            by_pool[id(pool)] = (out, idle)
        except Exception:
            continue

    def probe(engine: Any) -> str | None:
        pool = engine.pool
        if callable(getattr(pool, "checkedout", None)) and callable(
            getattr(pool, "checkedin", None)
        ):
            out, idle = int(pool.checkedout()), int(pool.checkedin())
        else:
            out, idle = by_pool.get(id(pool), (0, 0))
        if out <= 0 and idle <= 0:
            return None
        url = engine.url.render_as_string(hide_password=True)
        return f"engine {url} ({out} checked out, {idle} idle in its pool)"

    return probe


# --- psycopg2 and psycopg 3 -------------------------------------------------------------


def _psycopg2_connection(connection: Any) -> str | None:
    if connection.closed != 0:
        return None
    return f"connection {connection.dsn!r}"  # psycopg2 shows the password as xxx


def _psycopg2_pool(pool: Any) -> str | None:
    if pool.closed:
        return None
    idle, used = list(pool._pool), list(pool._used.values())
    if not idle and not used:
        return None
    dsn = (idle or used)[0].dsn
    return f"{type(pool).__name__} ({len(used)} in use, {len(idle)} idle; {dsn!r})"


def _psycopg_connection(connection: Any) -> str | None:
    if connection.closed:
        return None
    return f"{type(connection).__name__} {connection.info.dsn!r}"  # info.dsn has no password


def _psycopg_pool(pool: Any) -> str | None:
    if pool.closed:
        return None
    return f"{type(pool).__name__} {pool.name!r} ({_without_password(pool.conninfo)})"


def _without_password(conninfo: str) -> str:
    parser = sys.modules.get("psycopg.conninfo")
    try:
        params = parser.conninfo_to_dict(conninfo)  # type: ignore[union-attr]
        params.pop("password", None)
        return repr(parser.make_conninfo("", **params))  # type: ignore[union-attr]
    except Exception:
        return "conninfo not shown"


# --- confluent-kafka and paho-mqtt --------------------------------------------------------


def _kafka_client(client: Any) -> str | None:
    try:
        # Local only: with a 0 timeout it returns the cached cluster id or raises
        # KafkaException; on a closed client it raises RuntimeError.
        client.cluster_id(0)
    except RuntimeError:
        return None
    except Exception:
        pass
    return f"{type(client).__name__} object at {id(client):#x}"


def _mqtt_client(client: Any) -> str | None:
    thread = getattr(client, "_thread", None)
    if thread is None or not thread.is_alive():
        return None
    client_id = client._client_id.decode(errors="replace")
    return f"client {client_id!r} for {client.host}:{client.port}"
