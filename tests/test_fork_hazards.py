"""The failures that per-worker resources exist to prevent, shown with plain multiprocessing.

Each test makes a database pool, a session or a threaded client the naive way (in the parent,
inherited through ``fork``; or kept for the life of a worker with no reset between tasks) and
asserts that the failure really happens, against the real local servers (PostgreSQL, MariaDB,
Mosquitto; the Kafka producer needs no broker). safepool is not used here: these are the
"before" half of each proof. Reusable parts live in ``tests/hazards.py``.

Every wait is bounded, children that hang are killed, and the tables, roles and users made here
have unique names and are dropped by the fixtures.
"""

from __future__ import annotations

import multiprocessing
import uuid

import pytest

from tests import services
from tests.hazards import (
    add_item,
    backend_pid,
    call_reporting,
    check_own_rows,
    closed_loopback_port,
    connect_and_check_own_rows,
    create_limited_role,
    create_mariadb_user,
    create_tagged_table,
    drop_mariadb_user,
    drop_role,
    drop_table,
    engine_per_task,
    get_label,
    kafka_produce,
    kafka_producer,
    make_item_model,
    mariadb_connection_count,
    mariadb_connection_per_task,
    mqtt_client,
    mqtt_close,
    mqtt_publish,
    pool_check_own_rows,
    postgres_connection_count,
    run_forked,
    sqlalchemy_engine,
    terminate_backend,
    unique_name,
    wait_until,
    with_params,
)
from tests.services import importorskip

# The service fixtures, for as long as tests/conftest.py does not load tests.services as a plugin
# (``pytest_plugins = ["tests.services"]`` there makes them available to every test module).
postgres_dsn = services.postgres_dsn
mariadb_params = services.mariadb_params
mosquitto_address = services.mosquitto_address

CHILDREN = 6  # forked children sharing one inherited connection
QUERIES = 300  # queries each child runs, each checked against its own rows
CONNECTION_LIMIT = 3  # for the role / user in the exhaustion tests
PUBLISH_TIMEOUT = 2.0  # seconds to wait for an MQTT PUBACK / a Kafka flush
CHILD_BOUND = PUBLISH_TIMEOUT + 3  # a child not done by then is killed and counted as hung


def _report(outcomes: list) -> str:
    return "\n".join(str(outcome) for outcome in outcomes)


# --- a. a psycopg2 pool inherited through fork ----------------------------------------------


@pytest.fixture
def tagged_table(postgres_dsn):
    importorskip("psycopg2")
    table = unique_name("rows")
    create_tagged_table(postgres_dsn, table, [f"child-{i}" for i in range(CHILDREN)])
    yield table
    drop_table(postgres_dsn, table)


def test_psycopg2_pool_inherited_through_fork_crosses_replies(postgres_dsn, tagged_table):
    pg_pool = importorskip("psycopg2.pool")
    app = unique_name("app")
    dsn = with_params(postgres_dsn, application_name=app)
    pool = pg_pool.ThreadedConnectionPool(1, CHILDREN, dsn)
    try:
        # The parent uses its pool first, as an application does before it starts workers.
        conn = pool.getconn()
        assert check_own_rows(conn, tagged_table, "child-0", 3) == 3
        pool.putconn(conn)
        # Each child takes "a connection" from its copy of the pool: the same socket, the same
        # server backend, now written to and read from by several processes at once.
        outcomes = run_forked(
            pool_check_own_rows,
            [(pool, tagged_table, f"child-{i}", QUERIES) for i in range(CHILDREN)],
            timeout=20,
            grace=2,
        )
    finally:
        pool.closeall()
    report = _report(outcomes)
    print(report)
    failed = [o for o in outcomes if o.status != "returned"]
    assert failed, f"every child got its own rows through one shared connection:\n{report}"
    # A failure is a driver/protocol error, rows of another child, or a child stuck waiting for a
    # reply another child read; never a crash of the child itself.
    assert all(o.status in {"raised", "hung"} for o in failed), report
    assert all(o.value == QUERIES for o in outcomes if o.status == "returned"), report
    # Nothing left on the server once the children are gone and the parent closed its pool.
    assert wait_until(lambda: postgres_connection_count(postgres_dsn, application_name=app) == 0)


def test_control_connection_made_in_each_forked_child_gets_its_own_rows(postgres_dsn, tagged_table):
    """The same children and queries, each with a connection it made itself: no failure. So the
    failure above comes from sharing the inherited connection, not from the harness."""
    app = unique_name("app")
    dsn = with_params(postgres_dsn, application_name=app)
    outcomes = run_forked(
        connect_and_check_own_rows,
        [(dsn, tagged_table, f"child-{i}", QUERIES) for i in range(CHILDREN)],
        timeout=30,
    )
    assert [o.status for o in outcomes] == ["returned"] * CHILDREN, _report(outcomes)
    assert all(o.value == QUERIES for o in outcomes)
    assert wait_until(lambda: postgres_connection_count(postgres_dsn, application_name=app) == 0)


# --- b. a failed task poisons the next one on a long-lived session/connection ----------------


@pytest.fixture
def item_model(postgres_dsn):
    importorskip("psycopg2")
    importorskip("sqlalchemy", "2.0")
    metadata, item = make_item_model(unique_name("items"))
    engine = sqlalchemy_engine(postgres_dsn, pool_size=1, max_overflow=1)
    metadata.create_all(engine)
    try:
        yield engine, item
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_orm_session_reused_after_failed_flush_raises_pending_rollback(item_model):
    from sqlalchemy.exc import IntegrityError, PendingRollbackError
    from sqlalchemy.orm import Session

    engine, item = item_model
    session = Session(engine)  # the worker's one session, used by every task, never reset
    try:
        add_item(session, item, 1, "first")  # task 1
        session.commit()
        with pytest.raises(IntegrityError, match="duplicate key value violates unique constraint"):
            add_item(session, item, 1, "again")  # task 2 fails; the worker reports it, moves on
        with pytest.raises(PendingRollbackError) as poisoned:
            get_label(session, item, 1)  # task 3 did nothing wrong, and fails
        assert "This Session's transaction has been rolled back due to a previous exception" in str(
            poisoned.value
        )
        print(f"task 3: {type(poisoned.value).__name__}: {str(poisoned.value).splitlines()[0]}")
        session.rollback()  # what a per-task session reset does
        assert get_label(session, item, 1) == "first"
    finally:
        session.close()


def test_orm_session_whose_backend_was_terminated_fails_the_next_tasks(postgres_dsn, item_model):
    from sqlalchemy.exc import OperationalError, PendingRollbackError
    from sqlalchemy.orm import Session

    engine, item = item_model
    session = Session(engine)
    try:
        add_item(session, item, 1, "in flight")  # task 1 leaves its transaction open
        assert terminate_backend(postgres_dsn, backend_pid(session))  # admin, failover, timeout
        with pytest.raises(OperationalError) as lost:
            get_label(session, item, 1)  # task 2
        assert "server closed the connection unexpectedly" in str(
            lost.value
        ) or "terminating connection due to administrator command" in str(lost.value)
        with pytest.raises(PendingRollbackError, match="Can't reconnect until invalid transaction"):
            get_label(session, item, 1)  # task 3
        print(f"task 2: {str(lost.value).splitlines()[0]}")
    finally:
        session.close()


def test_psycopg2_connection_whose_backend_was_terminated_fails_the_next_tasks(postgres_dsn):
    psycopg2 = importorskip("psycopg2")
    conn = psycopg2.connect(postgres_dsn)
    try:
        pid = backend_pid(conn)  # task 1; psycopg2 opened a transaction for it
        assert terminate_backend(postgres_dsn, pid)
        with pytest.raises(psycopg2.OperationalError) as lost:
            backend_pid(conn)  # task 2
        assert "server closed the connection unexpectedly" in str(
            lost.value
        ) or "terminating connection due to administrator command" in str(lost.value)
        assert conn.closed
        with pytest.raises(psycopg2.InterfaceError, match="connection already closed"):
            backend_pid(conn)  # task 3, and every task after it
    finally:
        conn.close()


# --- c. a new engine / connection per task exhausts the server's connections -----------------


@pytest.fixture
def limited_role(postgres_dsn):
    importorskip("psycopg2")
    role = unique_name("role")
    create_limited_role(postgres_dsn, role, CONNECTION_LIMIT)
    try:
        yield role
    finally:
        drop_role(postgres_dsn, role)


def _run_tasks_until_error(fn, arg, count: int, counter) -> tuple[list, list[int]]:
    """Run ``fn(arg)`` ``count`` times on a 2-worker fork ``multiprocessing.Pool`` (long-lived
    workers, as in production), stopping at the first error; after each task, record
    ``counter()`` (connections the server sees)."""
    results: list = []
    counts: list[int] = []
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        for _ in range(count):
            status, value = pool.apply_async(call_reporting, (fn, arg)).get(timeout=20)
            results.append((status, value))
            counts.append(counter())
            if status == "error":
                break
    finally:
        pool.terminate()
        pool.join()
    return results, counts


def test_engine_per_task_exhausts_role_connection_limit(postgres_dsn, limited_role):
    importorskip("sqlalchemy", "2.0")
    role_dsn = with_params(postgres_dsn, user=limited_role)
    results, counts = _run_tasks_until_error(
        engine_per_task,
        role_dsn,
        CONNECTION_LIMIT + 2,
        lambda: postgres_connection_count(postgres_dsn, user=limited_role),
    )
    print(results, counts)
    assert [status for status, _ in results] == ["ok"] * CONNECTION_LIMIT + ["error"], results
    assert counts[:CONNECTION_LIMIT] == list(range(1, CONNECTION_LIMIT + 1))
    assert f'too many connections for role "{limited_role}"' in results[-1][1]
    # The pool's workers are gone, so are their connections.
    assert wait_until(lambda: postgres_connection_count(postgres_dsn, user=limited_role) == 0)


@pytest.fixture
def limited_mariadb_user(mariadb_params):
    importorskip("pymysql")
    user = unique_name("user")
    create_mariadb_user(mariadb_params, user, max_connections=CONNECTION_LIMIT)
    try:
        yield user
    finally:
        drop_mariadb_user(mariadb_params, user)


def test_connection_per_task_exhausts_mariadb_user_limit(mariadb_params, limited_mariadb_user):
    user_params = {**mariadb_params, "user": limited_mariadb_user}
    results, counts = _run_tasks_until_error(
        mariadb_connection_per_task,
        user_params,
        CONNECTION_LIMIT + 2,
        lambda: mariadb_connection_count(mariadb_params, limited_mariadb_user),
    )
    print(results, counts)
    assert [status for status, _ in results] == ["ok"] * CONNECTION_LIMIT + ["error"], results
    assert counts[:CONNECTION_LIMIT] == list(range(1, CONNECTION_LIMIT + 1))
    assert "max_user_connections" in results[-1][1]
    assert wait_until(lambda: mariadb_connection_count(mariadb_params, limited_mariadb_user) == 0)


# --- d. a client whose network thread stays in the parent ------------------------------------


def test_mqtt_client_inherited_through_fork_never_publishes(mosquitto_address):
    importorskip("paho.mqtt", "2.0")
    client = mqtt_client(mosquitto_address, unique_name("mqtt"))
    topic = f"safepool/hazards/{uuid.uuid4().hex}"
    try:
        published, _ = mqtt_publish(client, topic, b"parent", PUBLISH_TIMEOUT)
        assert published, "the parent's own publish was not acknowledged"
        [child] = run_forked(
            mqtt_publish, [(client, topic, b"child", PUBLISH_TIMEOUT)], timeout=CHILD_BOUND
        )
        print(f"child: {child}")
        # The child's publish is queued for a network thread that only exists in the parent, so
        # it is never sent: wait_for_publish runs out. (A child forked while that thread held one
        # of the client's locks would block on it instead: "hung", killed. Both fail to publish.)
        assert child.status in {"returned", "hung"}, str(child)
        if child.status == "returned":
            published, waited = child.value
            assert not published, "a forked child published through the parent's client"
            assert waited >= PUBLISH_TIMEOUT
        # The parent's client still works: only the child is without a network thread.
        assert mqtt_publish(client, topic, b"parent again", PUBLISH_TIMEOUT)[0]
    finally:
        mqtt_close(client)


def test_kafka_producer_inherited_through_fork_never_reports_delivery():
    importorskip("confluent_kafka")
    topic = "safepool-hazards"
    producer = kafka_producer(closed_loopback_port(), message_timeout_ms=1000)
    try:
        # In the parent, librdkafka's threads time the message out and report it (no broker).
        remaining, reports, waited = kafka_produce(producer, topic, 10.0)
        assert (remaining, reports) == (0, ["Local: Message timed out"]), (remaining, reports)
        assert waited < 5
        # In a forked child there are no librdkafka threads. Usually flush() waits its whole
        # timeout and returns with the message still queued and the delivery callback never
        # called. Sometimes (6 runs in 30 here) the fork happened while a librdkafka thread
        # held the client's lock, and produce() blocks forever on it (rd_kafka_topic_new0 ->
        # rwlock_wrlock): "hung", killed. Either way no delivery report ever comes.
        [child] = run_forked(
            kafka_produce, [(producer, topic, PUBLISH_TIMEOUT)], timeout=CHILD_BOUND
        )
        print(f"child: {child}")
        assert child.status in {"returned", "hung"}, str(child)
        if child.status == "returned":
            remaining, reports, waited = child.value
            assert remaining >= 1
            assert reports == []
            assert waited >= PUBLISH_TIMEOUT * 0.9
    finally:
        producer.flush(0)
        del producer
