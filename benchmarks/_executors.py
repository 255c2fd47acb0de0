"""One small adapter per executor, each driving that executor through its own public API.

The executors' own modules are imported only by ``load()``, in the fresh
interpreter that measures them and before its clock starts; a missing package
shows up there as an ``ImportError`` (reported as "skipped").
"""

from __future__ import annotations

import importlib
import multiprocessing
import platform
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class Adapter:
    """How to create, feed and close one kind of pool."""

    #: The module to import (outside any timed region), and whose version is reported.
    module = ""

    def load(self) -> Any:
        """Import the executor's module; ``ImportError`` if it is not installed."""
        return importlib.import_module(self.module)

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.module)

    def create(self, workers: int, method: str) -> Any:
        raise NotImplementedError

    def start_method(self, pool: Any, method: str) -> str:
        """The start method the pool really uses (not just the one asked for)."""
        return method

    def submit(self, pool: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        """Schedule ``fn(arg)``; return something with a blocking ``result()``."""
        return pool.submit(fn, arg)

    def map(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        return iter(pool.map(fn, items, chunksize=chunksize))

    def close(self, pool: Any) -> None:
        pool.shutdown(wait=True)


class SafepoolAdapter(Adapter):
    module = "safepool"

    def create(self, workers: int, method: str) -> Any:
        # The start method is given by name, one of the ways safepool documents.
        return self.load().Executor(max_workers=workers, mp_context=method)

    def start_method(self, pool: Any, method: str) -> str:
        return str(pool.start_method)


class StdlibAdapter(Adapter):
    module = "concurrent.futures.process"

    def version(self) -> str:
        return f"Python {platform.python_version()}"

    def create(self, workers: int, method: str) -> Any:
        return self.load().ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context(method)
        )


class PebbleAdapter(Adapter):
    module = "pebble"

    def create(self, workers: int, method: str) -> Any:
        context = multiprocessing.get_context(method)
        return self.load().ProcessPool(max_workers=workers, context=context)

    def submit(self, pool: Any, fn: Callable[[Any], Any], arg: Any) -> Any:
        return pool.schedule(fn, args=(arg,))

    def map(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        # pebble's map returns a future whose result() is the iterator of results.
        return iter(pool.map(fn, items, chunksize=chunksize).result())

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()


class LokyAdapter(Adapter):
    module = "loky"

    def create(self, workers: int, method: str) -> Any:
        # loky picks its own start method (its default is "loky": fork+exec of
        # a fresh interpreter), so ``method`` is not passed on.
        return self.load().ProcessPoolExecutor(max_workers=workers)

    def start_method(self, pool: Any, method: str) -> str:
        context = getattr(pool, "_mp_context", None) or getattr(pool, "_context", None)
        if context is not None and hasattr(context, "get_start_method"):
            return str(context.get_start_method())
        return "unknown"


#: Executor kind -> adapter. The driver may list one kind under several labels (A/A).
ADAPTERS: dict[str, Adapter] = {
    "safepool": SafepoolAdapter(),
    "stdlib": StdlibAdapter(),
    "pebble": PebbleAdapter(),
    "loky": LokyAdapter(),
}
