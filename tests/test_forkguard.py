"""The fork guard: with ``mp_context="fork"``, ``Executor(...)`` warns about what in the parent
will not survive the fork (threads, open database connections, Kafka and MQTT clients).

The clients are real: PostgreSQL on loopback, SQLite files, a Kafka producer aimed at a port
nothing listens on (no broker needed), the local Mosquitto broker. The executors are created
and shut down without starting any worker, except in the test where nothing unsafe is alive.
Other tests may leave objects of their own alive, so each test looks for the objects it made
(by a unique tag), not for an exact list of warnings.
"""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import safepool
from tests import services, tasks
from tests.hazards import closed_loopback_port, mqtt_client, mqtt_close
from tests.services import import_unless_known_missing, importorskip

# The service fixtures, for as long as tests/conftest.py does not load tests.services.
postgres_dsn = services.postgres_dsn
mosquitto_address = services.mosquitto_address


def fork_warnings(mp_context: str = "fork") -> list[str]:
    """Create (and shut down, starting no worker) an Executor; return its ForkWarning texts.

    Also checks that every ForkWarning points at the ``Executor(...)`` line below."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = safepool.Executor(1, mp_context)  # <- the line the warnings must point at
    pool.shutdown()
    found = [w for w in caught if issubclass(w.category, safepool.ForkWarning)]
    for w in found:
        assert (w.filename, w.lineno) == (__file__, _EXECUTOR_LINE), (w.filename, w.lineno)
    return [str(w.message) for w in found]


_EXECUTOR_LINE = next(
    number
    for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1)
    if "# <- the line the warnings must point at" in line and "safepool.Executor" in line
)


def only(messages: list[str], needle: str) -> str:
    """The one warning text containing ``needle``."""
    matching = [m for m in messages if needle in m]
    assert len(matching) == 1, (needle, messages)
    return matching[0]


def none_mention(messages: list[str], needle: str) -> None:
    assert not [m for m in messages if needle in m], (needle, messages)


def tag() -> str:
    return f"sp_guard_{uuid.uuid4().hex[:10]}"


def dsn_params(dsn: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in dsn.split())


# --- SQLAlchemy -------------------------------------------------------------------------------


def test_sqlalchemy_postgres_engine_with_a_connection_warns_until_disposed(postgres_dsn):
    sa = importorskip("sqlalchemy")
    importorskip("psycopg2")
    params = dsn_params(postgres_dsn)
    url = sa.URL.create(
        "postgresql+psycopg2", username=params["user"], password="never-shown-pw",
        host=params["host"], port=int(params["port"]), database=params["dbname"],
    )
    name = tag()
    engine = sa.create_engine(url, connect_args={"application_name": name})
    shown = f"postgresql+psycopg2://{params['user']}:***@{params['host']}:{params['port']}/test"
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("select 1")) == 1
            message = only(fork_warnings(), shown)
            assert "1 checked out, 0 idle in its pool" in message
            assert "SQLAlchemy engine(s) hold open pooled connections" in message
            assert "engine.dispose(close=False) in the worker's initializer" in message
            assert "safepool.integrations.sqlalchemy.database(...)" in message
            assert 'drop mp_context="fork"' in message

        # Returned to the pool, the connection is still open: still a hazard.
        messages = fork_warnings()
        assert "0 checked out, 1 idle in its pool" in only(messages, shown)
        assert not [m for m in messages if "never-shown-pw" in m]
        # The raw psycopg2 connection is the engine's: named once, as the engine.
        none_mention(messages, name)

        engine.dispose()
        messages = fork_warnings()
        none_mention(messages, shown)
        none_mention(messages, name)
    finally:
        engine.dispose()


def test_sqlalchemy_sqlite_file_engine_warns_until_disposed(tmp_path):
    sa = importorskip("sqlalchemy")
    path = tmp_path / f"{tag()}.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    # An engine with other execution options shares the pool: named once.
    sharing = engine.execution_options(isolation_level="SERIALIZABLE")
    try:
        with sharing.connect() as conn:
            conn.execute(sa.text("create table t (x integer)"))
            message = only(fork_warnings(), str(path))
            assert message.count(str(path)) == 1
            assert f"engine sqlite:///{path} (1 checked out, 0 idle in its pool)" in message
            assert "engine.dispose(close=False)" in message
        engine.dispose()
        none_mention(fork_warnings(), str(path))
    finally:
        engine.dispose()


def test_sqlalchemy_engine_that_never_connected_does_not_warn(tmp_path):
    sa = importorskip("sqlalchemy")
    path = tmp_path / f"{tag()}.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    none_mention(fork_warnings(), str(path))
    engine.dispose()


# --- psycopg2 and psycopg 3 -------------------------------------------------------------------


def test_psycopg2_connection_and_pool_warn_until_closed(postgres_dsn):
    psycopg2 = importorskip("psycopg2")
    psycopg2_pool = importorskip("psycopg2.pool")
    conn_tag, pool_tag = tag(), tag()
    conn = psycopg2.connect(f"{postgres_dsn} application_name={conn_tag} password=never-shown-pw")
    pool = psycopg2_pool.SimpleConnectionPool(1, 2, f"{postgres_dsn} application_name={pool_tag}")
    try:
        message = only(fork_warnings(), conn_tag)
        assert "psycopg2 connection(s) or pool(s) are open" in message
        assert "connection 'user=postgres password=xxx" in message
        assert "never-shown-pw" not in message
        # The pool is named once (its connection is not listed on its own).
        assert message.count(pool_tag) == 1
        assert "SimpleConnectionPool (0 in use, 1 idle;" in message
        assert "safepool.integrations.psycopg2.pool(...)" in message

        used = pool.getconn()
        assert "SimpleConnectionPool (1 in use, 0 idle;" in only(fork_warnings(), pool_tag)
        pool.putconn(used)

        conn.close()
        pool.closeall()
        messages = fork_warnings()
        none_mention(messages, conn_tag)
        none_mention(messages, pool_tag)
    finally:
        conn.close()
        if not pool.closed:
            pool.closeall()


def test_psycopg3_connection_and_pool_warn_until_closed(postgres_dsn):
    psycopg = importorskip("psycopg")
    psycopg_pool = importorskip("psycopg_pool")
    conn_tag, pool_tag, pool_name = tag(), tag(), tag()
    conn = psycopg.connect(postgres_dsn, application_name=conn_tag)
    pool = psycopg_pool.ConnectionPool(
        f"{postgres_dsn} application_name={pool_tag} password=never-shown-pw",
        min_size=1, max_size=2, name=pool_name, open=True,
    )
    try:
        pool.wait(timeout=10)
        messages = fork_warnings()
        message = only(messages, conn_tag)
        assert "psycopg connection(s) or pool(s) are open" in message
        assert "Connection 'user=postgres" in message
        assert f"ConnectionPool '{pool_name}'" in message
        assert message.count(pool_tag) == 1  # the pool's idle connection is the pool's
        assert "never-shown-pw" not in message
        assert "safepool.integrations.psycopg.pool(...)" in message
        # The pool's threads are named in the thread warning.
        assert f"{pool_name}-worker-" in only(messages, "other thread(s) are alive")

        with pool.connection():  # checked out: still the pool's
            assert only(fork_warnings(), pool_tag).count(pool_tag) == 1

        conn.close()
        pool.close()
        messages = fork_warnings()
        none_mention(messages, conn_tag)
        none_mention(messages, pool_name)
    finally:
        conn.close()
        pool.close()


# --- confluent-kafka, paho-mqtt, threads -----------------------------------------------------


def _close_kafka(client: Any) -> None:
    if hasattr(client, "close"):  # Producer.close() is in confluent-kafka >= 2.6
        client.close()


def test_kafka_producer_warns_until_closed():
    kafka = importorskip("confluent_kafka")
    producer = kafka.Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    name = f"Producer object at {id(producer):#x}"
    try:
        message = only(fork_warnings(), name)
        assert "confluent-kafka client(s) are open" in message
        assert "flush() hangs" in message
        assert "safepool.integrations.kafka.producer(...)" in message
        if hasattr(producer, "close"):
            producer.close()
            none_mention(fork_warnings(), name)
    finally:
        _close_kafka(producer)
        del producer


def test_kafka_consumer_and_admin_client_warn():
    kafka = importorskip("confluent_kafka")
    admin = importorskip("confluent_kafka.admin")
    config = {"bootstrap.servers": f"127.0.0.1:{closed_loopback_port()}", "log_level": 0}
    consumer = kafka.Consumer({**config, "group.id": tag()})
    client = admin.AdminClient(config)
    try:
        message = only(fork_warnings(), f"Consumer object at {id(consumer):#x}")
        assert f"AdminClient object at {id(client):#x}" in message
        consumer.close()
        none_mention(fork_warnings(), f"Consumer object at {id(consumer):#x}")
    finally:
        consumer.close()
        del client


def test_mqtt_client_with_its_loop_thread_warns_until_stopped(mosquitto_address):
    importorskip("paho.mqtt", "2.0")
    client_id = tag()
    client = mqtt_client(mosquitto_address, client_id)
    try:
        messages = fork_warnings()
        message = only(messages, f"client '{client_id}' for {mosquitto_address[0]}:")
        assert "network loop thread running (loop_start())" in message
        assert "safepool.integrations.mqtt.client(...)" in message
        assert f"paho-mqtt-client-{client_id}" in only(messages, "other thread(s) are alive")
    finally:
        mqtt_close(client)
    none_mention(fork_warnings(), client_id)


def test_live_thread_is_named():
    stop = threading.Event()
    name = tag()
    thread = threading.Thread(target=stop.wait, name=name)
    thread.start()
    try:
        message = only(fork_warnings(), name)
        assert "other thread(s) are alive" in message
        assert "stays locked in the worker for ever" in message
    finally:
        stop.set()
        thread.join()
    none_mention(fork_warnings(), name)


# --- when there is nothing to say -------------------------------------------------------------


@pytest.fixture
def everything_unsafe(postgres_dsn, tmp_path) -> Iterator[None]:
    """A thread, an SQLAlchemy engine with a connection, psycopg2 and psycopg connections and
    pools, and a Kafka producer (where confluent-kafka can be installed), all alive for the test,
    all closed after it."""
    sa = importorskip("sqlalchemy")
    psycopg2 = importorskip("psycopg2")
    psycopg2_pool = importorskip("psycopg2.pool")
    psycopg = importorskip("psycopg")
    psycopg_pool = importorskip("psycopg_pool")
    kafka = import_unless_known_missing("confluent_kafka")
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name=tag())
    thread.start()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    sa_conn = engine.connect()
    pg2 = psycopg2.connect(postgres_dsn)
    pg2_pool = psycopg2_pool.SimpleConnectionPool(1, 1, postgres_dsn)
    pg3 = psycopg.connect(postgres_dsn)
    pg3_pool = psycopg_pool.ConnectionPool(postgres_dsn, min_size=1, open=True)
    producer = (
        None if kafka is None
        else kafka.Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    )
    try:
        assert fork_warnings("fork")  # they are seen with fork
        yield
    finally:
        if producer is not None:
            _close_kafka(producer)
        pg3_pool.close()
        pg3.close()
        pg2_pool.closeall()
        pg2.close()
        sa_conn.close()
        engine.dispose()
        stop.set()
        thread.join()


@pytest.mark.parametrize(
    "mp_context", [None, "forkserver", "spawn", multiprocessing.get_context("forkserver")]
)
def test_no_warning_without_fork_even_with_everything_unsafe_alive(
    everything_unsafe, mp_context
):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = safepool.Executor(1, mp_context)
    pool.shutdown()
    assert not [w for w in caught if issubclass(w.category, safepool.ForkWarning)]


def test_no_warning_with_fork_when_everything_was_closed(postgres_dsn, tmp_path):
    sa = importorskip("sqlalchemy")
    psycopg2 = importorskip("psycopg2")
    kafka = import_unless_known_missing("confluent_kafka")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    engine.connect().close()
    engine.dispose()
    psycopg2.connect(postgres_dsn).close()
    if kafka is not None:
        producer = kafka.Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
        _close_kafka(producer)
        del producer
    thread = threading.Thread(target=lambda: None, name=tag())
    thread.start()
    thread.join()
    gc.collect()  # what earlier tests dropped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with safepool.Executor(1, "fork") as pool:
            assert pool.submit(tasks.add, 2, 3).result(timeout=30) == 5
    assert not [w for w in caught if issubclass(w.category, safepool.ForkWarning)], [
        str(w.message) for w in caught
    ]


# --- robustness -------------------------------------------------------------------------------


def test_an_object_that_fails_inspection_is_skipped(tmp_path):
    sa = importorskip("sqlalchemy")
    broken_path, fine_path = tmp_path / f"{tag()}.db", tmp_path / f"{tag()}.db"
    broken, fine = sa.create_engine(f"sqlite:///{broken_path}"), sa.create_engine(
        f"sqlite:///{fine_path}"
    )

    def boom() -> int:
        raise RuntimeError("inspecting this pool fails")

    try:
        with broken.connect(), fine.connect():
            broken.pool.checkedout = boom  # type: ignore[method-assign]
            messages = fork_warnings()
            none_mention(messages, str(broken_path))
            assert str(fine_path) in only(messages, "SQLAlchemy engine(s)")
    finally:
        broken.pool.__dict__.pop("checkedout", None)
        broken.dispose()
        fine.dispose()


def test_a_long_list_is_cut_short(tmp_path):
    sa = importorskip("sqlalchemy")
    engines = [sa.create_engine(f"sqlite:///{tmp_path / f'{i}.db'}") for i in range(7)]
    conns = [engine.connect() for engine in engines]
    try:
        message = only(fork_warnings(), "SQLAlchemy engine(s)")
        assert sum(str(tmp_path) in part for part in message.split("; ")) == 5
        assert "more. A forked worker" in message
    finally:
        for conn in conns:
            conn.close()
        for engine in engines:
            engine.dispose()


def test_the_guard_imports_no_client_library():
    code = (
        "import sys, warnings, safepool\n"
        "warnings.simplefilter('error')\n"
        "safepool.Executor(1, 'fork').shutdown()\n"
        "libs = ['sqlalchemy', 'psycopg2', 'psycopg', 'psycopg_pool', 'confluent_kafka', 'paho']\n"
        "print(sorted(m for m in libs if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        cwd=str(Path(__file__).resolve().parent.parent), check=True,
    )
    assert out.stdout.strip() == "[]", out
