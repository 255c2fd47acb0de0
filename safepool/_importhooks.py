"""Run code right after a module is first imported (post-import hooks), in a worker.

A worker sets some modules up only if a task ever imports them: logging gets
the bridge to the parent (``_logbridge``), and, in a worker started by
safepool's own spawn, multiprocessing gets its child state (``_spawnchild``).
Importing them up front would add their import time to every new worker's
start, which recycling and timeouts pay again and again.
"""

from __future__ import annotations

import sys
import threading

TYPE_CHECKING = False  # not typing's: this runs in every new worker
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

__all__ = ["after_import"]


def after_import(name: str, fn: Callable[[ModuleType], None]) -> None:
    """Call ``fn(module)`` once the module ``name`` is imported.

    If it already is, ``fn`` runs now. Otherwise it runs right after the
    module's own code, in the thread that imports it, before that import
    returns, so code that imports the module sees it set up. An exception
    from ``fn`` is printed to stderr; it does not fail the import.
    """
    if name in sys.modules:
        __import__(name)  # waits for another thread still running the module
        fn(sys.modules[name])
        return
    finder = _finder()
    with _lock:
        finder.pending.setdefault(name, []).append(fn)
    # Another thread may have found the module before the hook was there, and be
    # running it now: then the hook runs here, once that import is done.
    if name in sys.modules:
        __import__(name)
        with _lock:
            hooks = finder.pending.get(name, [])
            mine = fn in hooks
            if mine:
                hooks.remove(fn)
        if mine:
            fn(sys.modules[name])


#: Guards the hooks waiting for each module: they run exactly once.
_lock = threading.Lock()


def _finder() -> _AfterImport:
    with _lock:
        for finder in sys.meta_path:
            if isinstance(finder, _AfterImport):
                return finder
        finder = _AfterImport()
        sys.meta_path.insert(0, finder)
        return finder


class _AfterImport:
    """A meta path finder that finds nothing itself: for a module with hooks, it asks
    the finders after it for the module and wraps the loader they give."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.pending:
            return None
        finders = sys.meta_path
        later = finders[finders.index(self) + 1:] if self in finders else finders
        for finder in later:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenRunHooks(spec.loader, self)
        return spec

    def run_hooks(self, module: ModuleType) -> None:
        name = module.__name__
        with _lock:
            if sys.modules.get(name) is not module:
                # Run outside the import system (``importlib.util.find_spec``, then
                # ``module_from_spec``): the hooks wait for the real import.
                return
            hooks = self.pending.pop(name, [])
        for fn in hooks:
            try:
                fn(module)
            except Exception:
                import traceback

                sys.stderr.write(f"safepool: setting up {module.__name__} after its import "
                                 "failed (the import itself succeeded):\n")
                traceback.print_exc()


class _ThenRunHooks:
    """A loader that runs the module with the real loader, then its hooks."""

    def __init__(self, loader: Any, finder: _AfterImport) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # Afterwards the module shows its real loader, not this wrapper.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._finder.run_hooks(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
