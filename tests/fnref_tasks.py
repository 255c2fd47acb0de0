"""Functions for tests/test_fnref.py: sent by reference, then renamed or replaced."""

from __future__ import annotations

import functools


def original(x: int) -> tuple[str, int]:
    return ("original", x)


def replacement(x: int) -> tuple[str, int]:
    return ("replacement", x)


def replace_original_here() -> None:
    """In the process that runs it: make the name ``original`` lead to ``replacement``."""
    global original
    original = replacement


def _plain(x: int) -> int:
    return x


@functools.wraps(_plain)
def wrapped(x: int) -> int:
    """Says it is ``_plain`` (``__qualname__``), but that name leads to another function."""
    return x


class Holder:
    @staticmethod
    def static(x: int) -> int:
        return x

    def method(self, x: int) -> int:
        return x
