"""Run CPython's own ProcessPoolExecutor tests against safepool.

A developer tool, not part of the test suite: it needs an interpreter that ships the
``test.test_concurrent_futures`` package (3.13 here; the pyenv 3.11 and 3.12 builds lack it):

    PYTHONPATH=. .tox/py313/bin/python tools/cpython_suite.py [module ...]

It puts ``safepool.Executor`` into the suite's ProcessPool mixins and runs their spawn and
forkserver variants (safepool's fork support is tested in tests/). docs/migrating.md lists
the results and why the remaining failures are expected.
"""

from __future__ import annotations

import importlib
import sys
import unittest
from concurrent import futures

import safepool

DEFAULT_MODULES = ["test_as_completed", "test_wait", "test_init", "test_process_pool"]


def _suite(modules: list[str]) -> unittest.TestSuite:
    util = importlib.import_module("test.test_concurrent_futures.util")
    for mixin in (util.ProcessPoolSpawnMixin, util.ProcessPoolForkserverMixin):
        mixin.executor_type = safepool.Executor
    futures.ProcessPoolExecutor = safepool.Executor  # type: ignore[misc]
    suite = unittest.TestSuite()
    for name in modules:
        module = importlib.import_module(f"test.test_concurrent_futures.{name}")
        for attr in dir(module):
            case = getattr(module, attr)
            if (
                isinstance(case, type)
                and issubclass(case, unittest.TestCase)
                and ("ProcessPoolSpawn" in attr or "ProcessPoolForkserver" in attr)
            ):
                suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(case))
    return suite


if __name__ == "__main__":
    result = unittest.TextTestRunner(verbosity=2).run(_suite(sys.argv[1:] or DEFAULT_MODULES))
    sys.exit(0 if result.wasSuccessful() else 1)
