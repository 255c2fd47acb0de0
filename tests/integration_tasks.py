"""Tasks for tests/test_integrations.py: they use their worker's resources (workers import them)."""

from __future__ import annotations

import functools
import os
import threading

import safepool
from tests import hazards

_barrier = None


def set_barrier(barrier):
    """Initializer: keep a multiprocessing Barrier (it may only cross at process start)."""
    global _barrier
    _barrier = barrier


def pg_own_rows(table, tag, queries):
    """Run ``queries`` queries on this worker's psycopg2/psycopg connection; each must return
    exactly the rows tagged ``tag``. With a barrier set, tasks start in rounds, all at once."""
    if _barrier is not None:
        _barrier.wait(30)
    conn = safepool.resource("pg").connection()
    return hazards.check_own_rows(conn, table, tag, queries), os.getpid()


def pg_connection_count(admin_dsn, application_name):
    """Use this worker's connection, then count the connections the server has for the tag."""
    hazards.backend_pid(safepool.resource("pg").connection())
    return hazards.postgres_connection_count(admin_dsn, application_name=application_name)


def pg_killed_mid_transaction(admin_dsn):
    """Open a transaction, have the server kill this backend, then try to go on (fails)."""
    conn = safepool.resource("pg").connection()
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE scratch (n int)")
        cur.execute("INSERT INTO scratch VALUES (1)")
    hazards.terminate_backend(admin_dsn, hazards.backend_pid(conn))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM scratch")  # the server is gone: raises
        return cur.fetchone()[0]


def pg_backend_pid():
    return hazards.backend_pid(safepool.resource("pg").connection()), os.getpid()


@functools.cache
def item_model(table):
    return hazards.make_item_model(table)[1]


def orm_add_item(table, item_id, label):
    session = safepool.resource("db").session
    return hazards.add_item(session, item_model(table), item_id, label), os.getpid()


def orm_add_and_commit(table, item_id, label):
    session = safepool.resource("db").session
    hazards.add_item(session, item_model(table), item_id, label)
    session.commit()
    return item_id, os.getpid()


def orm_get_label(table, item_id):
    label = hazards.get_label(safepool.resource("db").session, item_model(table), item_id)
    return label, os.getpid()


def orm_killed_mid_transaction(admin_dsn, table):
    """Start a transaction in this task's Session, have the server kill its backend, go on."""
    session = safepool.resource("db").session
    hazards.add_item(session, item_model(table), 999_999, "doomed")
    hazards.terminate_backend(admin_dsn, hazards.backend_pid(session))
    return hazards.get_label(session, item_model(table), 999_999)  # raises OperationalError


def sql_scalar(sql):
    from sqlalchemy import text

    return safepool.resource("db").session.scalar(text(sql)), os.getpid()


def mqtt_publish(topic, payload):
    info = safepool.resource("mqtt").publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=5)
    return info.is_published(), os.getpid()


def kafka_produce_and_flush(topic):
    """Produce one message and flush: the delivery report must arrive (an error here, since
    no broker listens) and nothing may stay queued. Needs the producer's threads."""
    producer = safepool.resource("kafka")
    reports = []
    done = threading.Event()

    def on_delivery(err, msg):
        reports.append(str(err))
        done.set()

    producer.produce(topic, b"payload", callback=on_delivery)
    left = producer.flush(10)
    return left, reports, os.getpid()
