"""Argument checks that run at the call site, so bad input never reaches a worker."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

__all__ = ["check_callable", "check_positive_int", "check_timeout"]


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """Return ``value`` as a float number of seconds, or ``None`` for no timeout.

    Raises:
        TypeError: if it is not a real number (``bool`` is refused too).
        ValueError: if it is not a finite number greater than 0.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a number of seconds greater than 0, got {value!r}")
    if math.isinf(seconds):
        return None
    return seconds


def check_positive_int(value: Any, name: str, *, allow_none: bool = True) -> int | None:
    """Return ``value`` if it is an int >= 1 (or ``None`` when allowed).

    Raises:
        TypeError: if it is not an int.
        ValueError: if it is less than 1.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be greater than 0, got {value}")
    return value


def check_callable(fn: Any, what: str = "fn") -> None:
    """Raise TypeError if ``fn`` cannot be called."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__} {fn!r:.80}")
