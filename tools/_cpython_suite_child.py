"""Child process of tools/cpython_suite.py: one CPython test module, one start method.

Not meant to be run by hand (but it can be, for debugging one job):

    PYTHONPATH=/work/main /tmp/cps314/bin/python tools/_cpython_suite_child.py \\
        --module test_process_pool --start-method spawn --events /tmp/ev.jsonl

It puts ``safepool.Executor`` in place of ``concurrent.futures.ProcessPoolExecutor`` (the
attribute of the ``concurrent.futures`` package and the ``executor_type`` of the
``ProcessPool{Fork,Spawn,Forkserver}Mixin`` classes of ``test.test_concurrent_futures.util``)
before the test module is imported, selects that module's ProcessPool tests for one start
method, and runs them. Each event is appended to ``--events`` as one JSON line, written with
a single ``os.write`` so that the parent can read whatever was recorded if this process is
killed:

    {"event": "plan", "tests": [id, ...]}         the tests this run will try, in order
    {"event": "start", "id": id}                  a test started
    {"event": "partial", "id": id, ...}           a failure or error, as soon as it happens
    {"event": "result", "id": id, "outcome": ..}  passed | failed | errored | skipped
    {"event": "done"}                             the suite (and its fixtures) returned

A watchdog (``faulthandler.dump_traceback_later(exit=True)``) is re-armed at every test
start and end: if one test, or the class/module fixture code between two tests, runs for
longer than ``--test-timeout`` seconds, the stacks of all threads are written to
``--traceback-file`` and this process exits at once. The parent then records that test as
hung and starts a new child for the tests that had not started (``--exclude``).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import sys
import time
import traceback
import unittest

START_METHODS = ("fork", "spawn", "forkserver")
MIXINS = {
    "fork": "ProcessPoolForkMixin",
    "spawn": "ProcessPoolSpawnMixin",
    "forkserver": "ProcessPoolForkserverMixin",
}
PACKAGE = "test.test_concurrent_futures"


class _Events:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, **record: object) -> None:
        line = json.dumps(record, default=repr) + "\n"
        os.write(self._fd, line.encode())


def short_id(test: unittest.TestCase | object) -> str:
    """``test_process_pool.ProcessPoolSpawnProcessPoolExecutorTest.test_submit``."""
    test_id = test.id() if hasattr(test, "id") else str(test)
    prefix = PACKAGE + "."
    return test_id[len(prefix):] if test_id.startswith(prefix) else test_id


def patch_executor() -> None:
    """Put safepool.Executor where the suite looks for ProcessPoolExecutor."""
    import concurrent.futures

    import safepool

    util = importlib.import_module(f"{PACKAGE}.util")
    for name in MIXINS.values():
        getattr(util, name).executor_type = safepool.Executor
    concurrent.futures.ProcessPoolExecutor = safepool.Executor  # type: ignore[misc]


def _iter_tests(suite: unittest.TestSuite):  # type: ignore[no-untyped-def]
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def select_tests(module_name: str, start_method: str) -> list[unittest.TestCase]:
    """The module's ProcessPool tests for one start method.

    These are the test classes built on that start method's mixin (the
    ``create_executor_tests`` classes, which mix in ``ExecutorTest`` and the other
    per-module test bodies), plus the tests of other classes whose method is named after
    the start method (``test_init.FailingInitializerResourcesTest.test_spawn``, which
    runs the ``ProcessPoolSpawnFailingInitializerTest`` class itself).
    """
    util = importlib.import_module(f"{PACKAGE}.util")
    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    mixin = getattr(util, MIXINS[start_method])
    executor_mixin = util.ExecutorMixin
    loader = unittest.defaultTestLoader
    tests: list[unittest.TestCase] = []
    for attr in sorted(vars(module)):
        case = getattr(module, attr)
        if not (isinstance(case, type) and issubclass(case, unittest.TestCase)):
            continue
        if case.__module__ != module.__name__:
            continue  # imported from elsewhere
        if issubclass(case, mixin):
            tests.extend(_iter_tests(loader.loadTestsFromTestCase(case)))
        elif not issubclass(case, executor_mixin):
            for test in _iter_tests(loader.loadTestsFromTestCase(case)):
                if getattr(test, "_testMethodName", "") == f"test_{start_method}":
                    tests.append(test)
    return tests


def _error_text(err: tuple) -> str:  # type: ignore[type-arg]
    exc_type, exc, tb = err
    return "".join(traceback.format_exception(exc_type, exc, tb))


class _Result(unittest.TestResult):
    """Records each test's outcome as an event; re-arms the watchdog around each test."""

    def __init__(self, events: _Events, arm) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self._events = events
        self._arm = arm
        self._outcome: dict[str, dict] = {}  # type: ignore[type-arg]
        self._t0: dict[str, float] = {}
        self.warnings: list[str] = []

    def _record(self, test, outcome: str, detail: str = "") -> None:  # type: ignore[no-untyped-def]
        parent = getattr(test, "test_case", None)  # a subTest(): count it for its test
        if parent is not None and short_id(parent) in self._outcome:
            if outcome == "skipped":
                detail = f"[subtest {test._subDescription()}] {detail}"
            test = parent
        tid = short_id(test)
        if outcome in ("failed", "errored"):
            # Sent now too: if the test then hangs (in tearDown, say), the parent still
            # knows what had failed.
            self._events.write(event="partial", id=tid, outcome=outcome, detail=detail)
        if tid not in self._outcome:
            # A failure in a class/module fixture: no startTest for it.
            self._events.write(event="result", id=tid, outcome=outcome, detail=detail,
                               duration=0.0, warnings=[], fixture=True)
            return
        current = self._outcome[tid]
        rank = {"passed": 0, "skipped": 1, "failed": 2, "errored": 3}
        if rank[outcome] >= rank[current["outcome"]]:
            current["outcome"] = outcome
        if detail:
            current["details"].append(detail)

    def startTest(self, test) -> None:  # type: ignore[no-untyped-def]
        super().startTest(test)
        self._arm()
        tid = short_id(test)
        self._outcome[tid] = {"outcome": "passed", "details": []}
        self._t0[tid] = time.monotonic()
        self.warnings = []
        from test import support

        support.environment_altered = False
        self._events.write(event="start", id=tid)

    def stopTest(self, test) -> None:  # type: ignore[no-untyped-def]
        super().stopTest(test)
        tid = short_id(test)
        from test import support

        state = self._outcome.pop(tid)
        self._events.write(
            event="result", id=tid, outcome=state["outcome"],
            detail="\n".join(state["details"]),
            duration=round(time.monotonic() - self._t0.pop(tid), 3),
            warnings=self.warnings, env_changed=bool(support.environment_altered),
        )
        self._arm()

    def addError(self, test, err) -> None:  # type: ignore[no-untyped-def]
        super().addError(test, err)
        self._record(test, "errored", _error_text(err))

    def addFailure(self, test, err) -> None:  # type: ignore[no-untyped-def]
        super().addFailure(test, err)
        self._record(test, "failed", _error_text(err))

    def addSubTest(self, test, subtest, err) -> None:  # type: ignore[no-untyped-def]
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "errored"
            detail = f"[subtest {subtest._subDescription()}]\n{_error_text(err)}"
            self._record(test, kind, detail)

    def addSkip(self, test, reason: str) -> None:  # type: ignore[no-untyped-def]
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test, err) -> None:  # type: ignore[no-untyped-def]
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test) -> None:  # type: ignore[no-untyped-def]
        super().addUnexpectedSuccess(test)
        self._record(test, "failed", "unexpected success")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", required=True)
    parser.add_argument("--start-method", required=True, choices=START_METHODS)
    parser.add_argument("--events", required=True)
    parser.add_argument("--traceback-file", default=os.devnull)
    parser.add_argument("--test-timeout", type=float, default=60.0)
    parser.add_argument("--exit-timeout", type=float, default=20.0)
    parser.add_argument("--exclude", default="", help="a file of test ids to leave out")
    parser.add_argument("--match", action="append", default=[],
                        help="run only tests whose id contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="write the plan and stop")
    args = parser.parse_args(argv)

    events = _Events(args.events)
    tb_file = open(args.traceback_file, "w")  # noqa: SIM115 - open until exit

    def arm() -> None:
        # Restarting the timer also covers the fixture code between two tests.
        faulthandler.dump_traceback_later(args.test_timeout, exit=True, file=tb_file)

    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    arm()  # the import of the test module is bounded too

    patch_executor()
    from test import support

    result = _Result(events, arm)

    original_warning = support.print_warning

    def print_warning(msg: str) -> None:
        result.warnings.extend(msg.splitlines())
        original_warning(msg)

    print_warning.orig_stderr = original_warning.orig_stderr  # type: ignore[attr-defined]
    support.print_warning = print_warning

    tests = select_tests(args.module, args.start_method)
    if args.match:
        tests = [t for t in tests if any(m in short_id(t) for m in args.match)]
    if args.exclude:
        with open(args.exclude) as f:
            excluded = {line.strip() for line in f if line.strip()}
        tests = [t for t in tests if short_id(t) not in excluded]
    events.write(event="plan", tests=[short_id(t) for t in tests])
    if args.list:
        faulthandler.cancel_dump_traceback_later()
        return 0

    suite = unittest.TestSuite(tests)
    # The module's setUpModule/module cleanups run as part of the suite, as under regrtest.
    suite.run(result)
    events.write(event="done")
    # Interpreter exit (atexit hooks of multiprocessing, concurrent.futures, safepool) is
    # bounded too; the parent also kills this process group if it outlives its deadline.
    faulthandler.dump_traceback_later(args.exit_timeout, exit=True, file=tb_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
