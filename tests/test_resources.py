"""Per-worker resources: set up once, reset around every task, torn down on planned exits."""

from __future__ import annotations

import time
from functools import partial

import pytest

import safepool
from tests import resource_defs as rd
from tests import tasks


@pytest.fixture
def logfile(tmp_path):
    return str(tmp_path / "events.log")


def events(path, kind=None):
    lines = rd.read_log(path)
    return [line for line in lines if kind is None or line[0] == kind]


def test_set_up_once_per_worker_and_reset_around_every_task(make_pool, logfile):
    pool = make_pool(1, resources=[rd.session_resource(logfile)])
    results = [pool.submit(rd.use, "db").result(timeout=30) for _ in range(3)]
    pool.shutdown()
    worker = results[0][1]
    assert results == [("db", worker)] * 3
    assert [line[0] for line in events(logfile)] == (
        ["setup"] + ["before", "after"] * 3 + ["teardown"]
    )
    assert all(line[-1] == str(worker) for line in events(logfile))


def test_after_hook_runs_when_the_task_raised_and_sees_the_outcome(make_pool, logfile):
    pool = make_pool(1, resources=[rd.session_resource(logfile)])
    with pytest.raises(ValueError, match="mid-transaction"):
        pool.submit(rd.use_and_fail, "db").result(timeout=30)
    assert pool.submit(rd.use, "db").result(timeout=30)[0] == "db"  # the next task is fine
    pool.shutdown()
    afters = [line[2] for line in events(logfile, "after")]
    assert afters == ["ValueError", "ok"]


def test_teardown_runs_on_every_planned_exit(make_pool, logfile):
    pool = make_pool(1, max_tasks_per_child=2, resources=[rd.session_resource(logfile)])
    pids = [pool.submit(rd.use, "db").result(timeout=30)[1] for _ in range(5)]
    pool.shutdown()
    assert len(set(pids)) == 3
    setups = [line[-1] for line in events(logfile, "setup")]
    teardowns = [line[-1] for line in events(logfile, "teardown")]
    assert setups == teardowns == [str(p) for p in dict.fromkeys(pids)]


def test_teardown_is_skipped_when_a_worker_is_killed(make_pool, logfile):
    pool = make_pool(1, resources=[rd.session_resource(logfile)])
    worker = pool.submit(rd.use, "db").result(timeout=30)[1]
    with pytest.raises(safepool.TaskTimeoutError):
        pool.options(timeout=0.3).submit(tasks.sleep_forever).result(timeout=30)
    pool.shutdown()
    assert str(worker) not in [line[-1] for line in events(logfile, "teardown")]


def test_generator_resources_and_dependency_order(make_pool, logfile):
    cache = safepool.Resource("cache", partial(rd.setup_needing_db, logfile), depends_on=["db"])
    gen = safepool.Resource("gen", partial(rd.generator_setup, logfile))
    pool = make_pool(1, resources=[cache, gen, rd.session_resource(logfile)])
    assert pool.submit(rd.use, "cache").result(timeout=30)[0] == ("cache-over", "db")
    assert pool.submit(rd.use, "gen").result(timeout=30)[0] == {"path": logfile}
    pool.shutdown()
    order = [(line[0], line[1]) for line in events(logfile) if line[0] in ("setup", "teardown")]
    assert order == [
        ("setup", "db"), ("setup", "cache"), ("setup", "gen"),
        ("teardown", "gen"), ("teardown", "db"),  # cache has no teardown; reverse order
    ]


def test_initializer_runs_alongside_resources(make_pool, logfile):
    pool = make_pool(1, initializer=tasks.set_state, initargs=("init",),
                     resources=[rd.session_resource(logfile)])
    assert pool.submit(tasks.get_state).result(timeout=30)[0] == "init"
    assert pool.submit(rd.use, "db").result(timeout=30)[0] == "db"


def test_decorated_generator_resource_is_sent_by_name(make_pool):
    pool = make_pool(1, resources=[rd.decorated])
    assert pool.submit(rd.use, "decorated").result(timeout=30)[0] == "from a decorated generator"


def test_poison_worker_recycles_after_the_task_and_keeps_its_result(make_pool, logfile):
    pool = make_pool(1, resources=[rd.session_resource(logfile)])
    value, poisoned = pool.submit(rd.poison_then_return, 42).result(timeout=30)
    assert value == 42
    assert pool.submit(rd.use, "db").result(timeout=30)[1] != poisoned
    pool.shutdown()
    assert str(poisoned) in [line[-1] for line in events(logfile, "teardown")]


def test_declared_exception_types_poison_the_worker(make_pool, logfile):
    resource = rd.session_resource(logfile, poison_on=[rd.ConnectionLost])
    pool = make_pool(1, resources=[resource])
    first = pool.submit(rd.use, "db").result(timeout=30)[1]
    with pytest.raises(rd.ConnectionLost):
        pool.submit(rd.raise_connection_lost).result(timeout=30)
    assert pool.submit(rd.use, "db").result(timeout=30)[1] != first
    with pytest.raises(ValueError):  # not declared: the worker is kept
        pool.submit(rd.use_and_fail, "db").result(timeout=30)


def test_a_failing_after_hook_poisons_but_the_result_is_delivered(make_pool, logfile):
    resource = safepool.Resource("db", partial(rd.setup_session, logfile, "db"),
                                 after=rd.failing_hook)
    pool = make_pool(1, resources=[resource])
    value, worker = pool.submit(rd.poison_then_return, "kept").result(timeout=30)
    assert value == "kept"
    assert pool.submit(tasks.pid).result(timeout=30) != worker


def test_a_failing_before_hook_fails_the_task_and_poisons(make_pool, logfile):
    resource = safepool.Resource("db", partial(rd.setup_session, logfile, "db"),
                                 before=rd.failing_hook)
    pool = make_pool(1, resources=[resource])
    with pytest.raises(RuntimeError, match="reset failed"):
        pool.submit(tasks.add, 1).result(timeout=30)
    assert len(events(logfile, "setup")) >= 1


def test_failing_setup_fails_futures_with_the_child_traceback_then_fails_fast(make_pool, logfile):
    never = safepool.Resource("db", partial(rd.failing_setup, logfile, 10**6))
    pool = make_pool(1, resources=[never], setup_backoff_max=2.0)
    with pytest.raises(safepool.ResourceSetupError) as info:
        pool.submit(tasks.add, 1).result(timeout=30)
    error = info.value
    assert error.resource == "db" and "database is down" in str(error)
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert "in failing_setup" in error.__cause__.__cause__.traceback
    # While backing off, submissions fail at once instead of queueing.
    start = time.monotonic()
    fast = pool.submit(tasks.add, 2)
    assert fast.done() and isinstance(fast.exception(), safepool.ResourceSetupError)
    assert time.monotonic() - start < 1.0
    # Retrying is spaced out, not a spin: few attempts in a second.
    time.sleep(1.0)
    attempts_in_a_second = len(events(logfile, "attempt"))
    assert 1 <= attempts_in_a_second <= 3


def test_a_resource_that_comes_back_is_used_again(make_pool, logfile):
    flaky = safepool.Resource("db", partial(rd.failing_setup, logfile, 1))
    pool = make_pool(1, resources=[flaky], setup_backoff_max=0.2)
    with pytest.raises(safepool.ResourceSetupError):
        pool.submit(tasks.add, 1).result(timeout=30)
    deadline = time.monotonic() + 20
    while True:  # retry as a caller would; the pool must recover after the backoff
        future = pool.submit(rd.use, "db")
        try:
            assert future.result(timeout=30)[0] == "connected"
            break
        except safepool.ResourceSetupError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_resource_lookup_errors_are_clear(make_pool, logfile):
    with pytest.raises(LookupError, match="only works inside a task"):
        safepool.resource("db")
    pool = make_pool(1, resources=[rd.session_resource(logfile)])
    with pytest.raises(LookupError, match="no resource 'nope'; it has: db"):
        pool.submit(rd.use, "nope").result(timeout=30)


@pytest.mark.parametrize(
    ("resources", "error", "match"),
    [
        (lambda p: [rd.session_resource(p), rd.session_resource(p)], ValueError, "two resources"),
        (lambda p: [rd.session_resource(p, depends_on=["x"])], ValueError, "depends on 'x'"),
        (lambda p: [rd.session_resource(p, "a", depends_on=["b"]),
                    rd.session_resource(p, "b", depends_on=["a"])],
         ValueError, "cycle: a -> b -> a"),
        (lambda p: [safepool.Resource("db", lambda: 1)], safepool.PicklingError,
         "setup function of resource 'db'"),
        (lambda p: ["db"], TypeError, "safepool.Resource"),
    ],
    ids=["duplicate", "unknown-dependency", "cycle", "lambda-setup", "not-a-resource"],
)
def test_configuration_errors_fail_at_construction(resources, error, match, logfile):
    with pytest.raises(error, match=match):
        safepool.Executor(1, "spawn", resources=resources(logfile))


def test_resource_declaration_errors():
    with pytest.raises(ValueError, match="identifier"):
        safepool.Resource("no spaces", int)
    with pytest.raises(TypeError, match="do not also pass teardown"):
        safepool.Resource("g", rd.generator_setup, teardown=print)
    with pytest.raises(TypeError, match="poison_on"):
        safepool.Resource("p", int, poison_on=["ValueError"])


def test_an_idle_worker_is_retired_after_idle_timeout_with_teardown(make_pool, logfile):
    pool = make_pool(1, idle_timeout=0.3, resources=[rd.session_resource(logfile)])
    first = pool.submit(rd.use, "db").result(timeout=30)[1]
    deadline = time.monotonic() + 10
    while str(first) not in [line[-1] for line in events(logfile, "teardown")]:
        assert time.monotonic() < deadline, "the idle worker was not retired"
        time.sleep(0.05)
    assert pool.submit(rd.use, "db").result(timeout=30)[1] != first  # a new worker on demand


def test_a_busy_worker_is_not_retired_by_idle_timeout(make_pool, logfile):
    pool = make_pool(1, idle_timeout=0.5, resources=[rd.session_resource(logfile)])
    pids = {pool.submit(tasks.pid_after, 0.2).result(timeout=30) for _ in range(5)}
    assert len(pids) == 1  # never idle for 0.5 s in a row


def test_task_functions_use_resources_of_their_executor(make_pool, logfile):
    pool = make_pool(1, resources=[rd.session_resource(logfile)])
    use = safepool.task(executor=pool)(rd.use)
    assert use("db").result(timeout=30)[0] == "db"


def test_a_hanging_setup_is_bounded_by_start_timeout(make_pool):
    hang = safepool.Resource("db", rd.hanging_setup)
    pool = make_pool(1, resources=[hang], start_timeout=0.5)
    with pytest.raises(safepool.ResourceSetupError, match=r"did not finish starting within 0\.5s"):
        pool.submit(tasks.add, 1).result(timeout=30)
    from tests.conftest import pool_processes, wait_gone

    assert wait_gone(pool_processes(), timeout=5) == []  # the hung worker was killed


def test_poison_worker_in_the_parent_does_nothing(logfile):
    safepool.poison_worker("called in the parent by mistake")
    with safepool.Executor(1, "fork") as pool:  # a fork worker would inherit any stray state
        pids = {pool.submit(tasks.pid).result(timeout=30) for _ in range(3)}
    assert len(pids) == 1
