"""safepool.integrations on real servers: the safe way, where the fork way fails
(tests/test_fork_hazards.py shows those failures)."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

import safepool
from safepool.integrations import kafka as sp_kafka
from safepool.integrations import mqtt as sp_mqtt
from safepool.integrations import psycopg as sp_psycopg
from safepool.integrations import psycopg2 as sp_psycopg2
from safepool.integrations import sqlalchemy as sp_sqlalchemy
from tests import hazards
from tests import integration_tasks as it
from tests.services import importorskip, mariadb_params, mosquitto_address, postgres_dsn

__all__ = ["mariadb_params", "mosquitto_address", "postgres_dsn"]  # fixtures used below


@pytest.fixture(scope="session")
def barrier4():
    """A Barrier(4) for forkserver workers. Session-scoped because creating it allocates
    multiprocessing's shared-memory heap (an fd kept for the interpreter's life), which must
    exist before the per-test leak check takes its snapshot."""
    return multiprocessing.get_context("forkserver").Barrier(4)


@pytest.fixture
def tagged_table(postgres_dsn):
    importorskip("psycopg2")
    table = hazards.unique_name("rows")
    tags = [f"task{i}" for i in range(8)]
    hazards.create_tagged_table(postgres_dsn, table, tags)
    yield table, tags
    hazards.drop_table(postgres_dsn, table)


@pytest.fixture
def items_table(postgres_dsn):
    importorskip("sqlalchemy")
    table = hazards.unique_name("items")
    metadata, _ = hazards.make_item_model(table)
    engine = hazards.sqlalchemy_engine(postgres_dsn)
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)
    engine.dispose()


def sa_url(dsn_user="postgres"):
    return f"postgresql+psycopg2://{dsn_user}@127.0.0.1:5432/test"


@pytest.mark.parametrize("flavour", ["psycopg2", "psycopg"])
def test_every_task_gets_exactly_its_own_rows(flavour, postgres_dsn, tagged_table, barrier4):
    # The fork-inherited pool crosses replies (test_fork_hazards); one pool per worker does not.
    importorskip(flavour)
    table, tags = tagged_table
    integration = sp_psycopg2 if flavour == "psycopg2" else sp_psycopg
    # Each round of 4 tasks waits at the barrier: they run at once, on 4 different workers.
    with safepool.Executor(4, "forkserver", it.set_barrier, (barrier4,),
                           resources=[integration.pool("pg", postgres_dsn)]) as pool:
        futures = [pool.submit(it.pg_own_rows, table, tag, 150) for tag in tags]
        results = [f.result(timeout=60) for f in futures]
    assert sum(done for done, _ in results) == 8 * 150 >= 1000  # 0 errors, every row its own
    assert len({pid for _, pid in results}) == 4  # 4 tasks ran concurrently


def test_duplicate_key_mid_transaction_does_not_poison_the_next_task(postgres_dsn, items_table):
    db = sp_sqlalchemy.database("db", sa_url())
    with safepool.Executor(1, resources=[db]) as pool:
        first = pool.submit(it.orm_add_and_commit, items_table, 1, "one").result(timeout=30)[1]
        duplicate = pool.submit(it.orm_add_item, items_table, 1, "again")
        with pytest.raises(Exception, match="duplicate key") as info:
            duplicate.result(timeout=30)
        assert type(info.value).__name__ == "IntegrityError"
        label, worker = pool.submit(it.orm_get_label, items_table, 1).result(timeout=30)
    assert (label, worker) == ("one", first)  # same worker, no PendingRollbackError


def test_backend_killed_mid_transaction_does_not_poison_the_next_task(postgres_dsn, items_table):
    db = sp_sqlalchemy.database("db", sa_url())
    with safepool.Executor(1, resources=[db]) as pool:
        first = pool.submit(it.sql_scalar, "select 1").result(timeout=30)[1]
        with pytest.raises(Exception, match=r"terminat|closed|server") as info:
            pool.submit(it.orm_killed_mid_transaction, postgres_dsn, items_table).result(timeout=30)
        assert type(info.value).__name__ == "OperationalError"
        value, worker = pool.submit(it.sql_scalar, "select 41 + 1").result(timeout=30)
    assert (value, worker) == (42, first)


def test_psycopg2_connection_killed_by_the_server_is_replaced(postgres_dsn):
    importorskip("psycopg2")
    with safepool.Executor(1, resources=[sp_psycopg2.pool("pg", postgres_dsn)]) as pool:
        before_pid, worker = pool.submit(it.pg_backend_pid).result(timeout=30)
        with pytest.raises(Exception, match=r"terminat|closed|server"):
            pool.submit(it.pg_killed_mid_transaction, postgres_dsn).result(timeout=30)
        after_pid, same_worker = pool.submit(it.pg_backend_pid).result(timeout=30)
    assert same_worker == worker and after_pid != before_pid


def test_postgres_connections_stay_within_workers_times_pool_size(postgres_dsn):
    # A role allowed exactly workers x pool size connections: one more would be refused.
    importorskip("psycopg2")
    role, app = hazards.unique_name("role"), hazards.unique_name("app")
    hazards.create_limited_role(postgres_dsn, role, 2)
    dsn = hazards.with_params(postgres_dsn, user=role, application_name=app)
    try:
        pg = sp_psycopg2.pool("pg", dsn, maxconn=1)
        with safepool.Executor(2, resources=[pg], max_tasks_per_child=1) as pool:
            futures = [pool.submit(it.pg_connection_count, postgres_dsn, app) for _ in range(50)]
            counts = [f.result(timeout=60) for f in futures]  # 50 recycles, no refusals
        assert max(counts) <= 2
        assert hazards.postgres_connection_count(postgres_dsn, application_name=app) == 0
    finally:
        hazards.drop_role(postgres_dsn, role)


def test_mariadb_connections_stay_within_workers_times_pool_size(mariadb_params):
    importorskip("pymysql")
    user = hazards.unique_name("user")
    hazards.create_mariadb_user(mariadb_params, user, max_connections=2)
    try:
        url = f"mysql+pymysql://{user}@127.0.0.1:{mariadb_params['port']}/test"
        db = sp_sqlalchemy.database("db", url)
        with safepool.Executor(2, resources=[db], max_tasks_per_child=1) as pool:
            futures = [pool.submit(it.sql_scalar, "select 1") for _ in range(50)]
            assert [f.result(timeout=60)[0] for f in futures] == [1] * 50  # no refusals
        assert hazards.mariadb_connection_count(mariadb_params, user) == 0
    finally:
        hazards.drop_mariadb_user(mariadb_params, user)


def test_passing_an_engine_or_connection_fails_with_a_worker_resource_hint(postgres_dsn):
    importorskip("sqlalchemy")
    import psycopg2

    engine = hazards.sqlalchemy_engine(postgres_dsn)
    conn = psycopg2.connect(postgres_dsn)
    try:
        with safepool.Executor(1) as pool:
            for obj in (engine, conn):
                with pytest.raises(safepool.PicklingError, match="worker resource") as info:
                    pool.submit(it.sql_scalar, obj).result(timeout=0)
                assert info.value.what.startswith("args[0]")
                assert f"args[0] is a {type(obj).__module__}" in str(info.value)
    finally:
        conn.close()
        engine.dispose()


def test_mqtt_client_per_worker_publishes_in_every_worker(mosquitto_address):
    paho = importorskip("paho.mqtt.client")
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"safepool/{hazards.unique_name('t')}"
    received = []
    subscribed, all_in = threading.Event(), threading.Event()
    listener = paho.Client(CallbackAPIVersion.VERSION2)
    listener.on_subscribe = lambda *a: subscribed.set()

    def on_message(client, userdata, message):
        received.append(message.payload)
        if len(received) == 6:
            all_in.set()

    listener.on_message = on_message
    listener.connect(*mosquitto_address)
    listener.loop_start()
    try:
        listener.subscribe(topic, qos=1)
        assert subscribed.wait(5)
        broker = sp_mqtt.client("mqtt", *mosquitto_address)
        with safepool.Executor(2, resources=[broker], max_tasks_per_child=2) as pool:
            results = [pool.submit(it.mqtt_publish, topic, f"m{i}").result(timeout=30)
                       for i in range(6)]
        assert all(published for published, _ in results)
        assert len({pid for _, pid in results}) == 3  # three workers, each with its own client
        assert all_in.wait(10)
        assert sorted(received) == [f"m{i}".encode() for i in range(6)]
    finally:
        listener.loop_stop()
        listener.disconnect()


def test_kafka_producer_per_worker_flushes_in_every_worker():
    importorskip("confluent_kafka")
    port = hazards.closed_loopback_port()  # no broker: delivery fails fast, but is reported
    config = {"bootstrap.servers": f"127.0.0.1:{port}", "message.timeout.ms": 1000}
    producer = sp_kafka.producer("kafka", config, flush_timeout=5)
    with safepool.Executor(2, resources=[producer], max_tasks_per_child=1) as pool:
        results = [pool.submit(it.kafka_produce_and_flush, "events").result(timeout=30)
                   for _ in range(3)]
    for left, reports, _ in results:
        assert left == 0 and len(reports) == 1  # flushed: the report came back, nothing queued
    assert len({pid for *_, pid in results}) == 3


def test_integrations_import_without_their_libraries(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('sqlalchemy', 'psycopg', 'psycopg_pool', 'psycopg2', 'confluent_kafka',"
        " 'paho'):\n"
        "    sys.modules[name] = None\n"
        "from safepool.integrations import sqlalchemy, psycopg, psycopg2, kafka, mqtt\n"
        "r = [sqlalchemy.database('a', 'sqlite://'), psycopg.pool('b', ''),"
        " psycopg2.pool('c', ''), kafka.producer('d', {}), mqtt.client('e')]\n"
        "print(len(r))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"


def test_a_wrong_database_url_fails_the_setup_not_a_later_task():
    importorskip("sqlalchemy")
    importorskip("psycopg2")
    port = hazards.closed_loopback_port()  # nothing listens: connection refused
    db = sp_sqlalchemy.database("db", f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test")
    with (
        safepool.Executor(1, resources=[db]) as pool,
        pytest.raises(safepool.ResourceSetupError, match="resource 'db'") as info,
    ):
        pool.submit(it.sql_scalar, "select 1").result(timeout=30)
    assert type(info.value.__cause__).__name__ == "OperationalError"
