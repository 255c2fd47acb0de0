"""Module-level resources and tasks for tests/test_resources.py (workers import them by name).

Every setup, hook and teardown appends one line to a log file, so the tests can
check what ran, in which worker, in which order.
"""

from __future__ import annotations

import os
import time
from functools import partial

import safepool


def log(path, *words):
    with open(path, "a") as f:
        f.write(" ".join(str(w) for w in (*words, os.getpid())) + "\n")


def read_log(path):
    with open(path) as f:
        return [line.split() for line in f]


class Session:
    def __init__(self, path, name):
        self.path, self.name, self.dirty = path, name, False


def setup_session(path, name):
    log(path, "setup", name)
    return Session(path, name)


def teardown_session(session):
    log(session.path, "teardown", session.name)


def before(session):
    log(session.path, "before", session.name)
    session.dirty = False


def after(session, outcome):
    result = "ok" if outcome.ok else type(outcome.exception).__name__
    log(session.path, "after", session.name, result)


def session_resource(path, name="db", **kwargs):
    return safepool.Resource(
        name, partial(setup_session, path, name), teardown=teardown_session,
        before=before, after=after, **kwargs,
    )


def generator_setup(path):
    log(path, "setup", "gen")
    yield {"path": path}
    log(path, "teardown", "gen")


def setup_needing_db(path):
    db = safepool.resource("db")  # set up first, as declared in depends_on
    log(path, "setup", "cache", db.name)
    return ("cache-over", db.name)


def use(name):
    value = safepool.resource(name)
    return (value.name if isinstance(value, Session) else value), os.getpid()


def use_and_fail(name):
    safepool.resource(name).dirty = True
    raise ValueError("task failed mid-transaction")


def poison_then_return(value):
    safepool.poison_worker("the connection is in an unknown state")
    return value, os.getpid()


class ConnectionLost(Exception):
    pass


def raise_connection_lost():
    raise ConnectionLost("server closed the connection unexpectedly")


def failing_setup(path, fail_times):
    """Fails the first ``fail_times`` setups (counted in the log), then works."""
    lines = read_log(path) if os.path.exists(path) else []
    attempts = sum(1 for line in lines if line[0] == "attempt")
    log(path, "attempt")
    if attempts < fail_times:
        raise ConnectionRefusedError(f"database is down (attempt {attempts + 1})")
    return "connected"


def failing_hook(session, *_):
    raise RuntimeError("reset failed")


@safepool.worker_resource("decorated", after=lambda value, outcome: None)
def decorated():
    yield "from a decorated generator"


def hanging_setup():
    import time

    while True:
        time.sleep(60)


def hanging_teardown(fifo, _value=None):
    """A teardown that never finishes (a flush to a broker that is gone); says it began."""
    from tests.tasks import notify

    notify(fifo, f"teardown {os.getpid()}")
    time.sleep(600)
