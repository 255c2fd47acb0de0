"""Functions sent by reference: pickled once per thread, looked up once per worker.

A module-level function pickles as a reference, its module's name and its
own (``mymodule.work``). Making that reference costs more than pickling a
small call's arguments: the pickler imports the module by name to check
that the name still leads to the function, and the worker's unpickler
imports it again to find it. For the same function submitted many times,
both ends keep the reference instead:

* the parent keeps each function's pickled reference (``reference``), and
  sends it in front of the pickled arguments (``safepool._transport``);
* a worker keeps the function each reference named (``function``).

Neither end trusts what it kept blindly. Both check, for each call, what
pickle itself would check: that the function's module is still the one in
``sys.modules`` and that its name there still leads to this very function.
A function that was renamed, replaced or deleted is pickled, or looked up,
as if it had never been kept, so the call fails, or finds the new function,
exactly as it would have without this module.

Only plain top-level functions are kept (``types.FunctionType``, a
``__qualname__`` without dots). The C pickler pickles those by reference
whatever reducers are registered (only a pickler's ``reducer_override``,
which safepool's have not, could do otherwise), so what is kept is what
each call would have made.
"""

from __future__ import annotations

import _pickle as pickle
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["References", "function"]

_PROTOCOL = 5
#: How many functions each end keeps (per thread in the parent); all are
#: dropped when a new one would exceed it, so a program that makes
#: functions on the fly never keeps more than this many alive.
_KEEP = 64


def _still_named(fn: Any, modname: str, module: Any, name: str) -> bool:
    """Whether pickle would still find ``fn`` as ``modname.name`` (the module
    in ``sys.modules`` the one kept, and its ``name`` this function)."""
    return (
        sys.modules.get(modname) is module
        and fn.__module__ == modname
        and fn.__qualname__ == name
        and getattr(module, name, None) is fn
    )


def _names(fn: Any) -> tuple[str, Any, str] | None:
    """``fn``'s module name, module and name, if it is a function pickle finds by
    those alone (a plain top-level function, reachable by its name); else None."""
    if type(fn) is not _FunctionType:
        return None
    modname, name = fn.__module__, fn.__qualname__
    if type(modname) is not str or type(name) is not str or "." in name:
        return None
    module = sys.modules.get(modname)
    if module is None or getattr(module, name, None) is not fn:
        return None
    return modname, module, name


_FunctionType = type(_names)  # types.FunctionType, without importing types (spawned workers)


class References:
    """The parent's side, one per pickling thread: each kept function's reference,
    as ``wrap`` makes it ready to send (``safepool._transport`` puts a header in front)."""

    __slots__ = ("_kept", "_wrap")

    def __init__(self, wrap: Callable[[bytes], bytes | None]) -> None:
        self._kept: dict[Any, tuple[bytes, str, Any, str]] = {}
        self._wrap = wrap

    def reference(self, fn: Any) -> bytes | None:
        """``fn`` pickled alone and wrapped, if it is a plain function that may be
        sent by reference (made once, then checked each time); else None."""
        if type(fn) is not _FunctionType:  # (and so hashed by identity, never raising)
            return None
        kept = self._kept.get(fn)
        if kept is not None:
            ref, modname, module, name = kept
            # _still_named, inlined: this runs for every call submitted.
            if (sys.modules.get(modname) is module and fn.__module__ == modname
                    and fn.__qualname__ == name and getattr(module, name, None) is fn):
                return ref
            del self._kept[fn]
        names = _names(fn)
        if names is None:
            return None
        wrapped = self._wrap(pickle.dumps(fn, _PROTOCOL))
        if wrapped is None:
            return None
        if len(self._kept) >= _KEEP:
            self._kept.clear()
        self._kept[fn] = (wrapped, *names)
        return wrapped


#: The worker's side: each reference it was sent, and the function it named.
_functions: dict[bytes, tuple[Callable[..., Any], str, Any, str]] = {}


def function(ref: bytes) -> Any:
    """The function ``ref`` (made by ``References.reference``) names, as
    ``pickle.loads(ref)`` finds it now."""
    kept = _functions.get(ref)
    if kept is not None:
        fn, modname, module, name = kept
        if _still_named(fn, modname, module, name):
            return fn
        del _functions[ref]
    fn = pickle.loads(ref)
    names = _names(fn)
    # Kept only if the reference names the function by the names it is checked
    # by: the same bytes as this end would pickle it to.
    if names is not None and pickle.dumps(fn, _PROTOCOL) == ref:
        if len(_functions) >= _KEEP:
            _functions.clear()
        _functions[ref] = (fn, *names)
    return fn
