"""Tasks for test_prefetch: each notes its start on the test's FIFO, some wait on a gate."""

from __future__ import annotations

import os
import signal

import safepool
from tests.tasks import notify


def note(fifo: str, tag: str) -> str:
    notify(fifo, f"{tag} {os.getpid()}")
    return tag


def _wait(gate: str) -> None:
    """Block until the test writes a byte to the named pipe ``gate``."""
    fd = os.open(gate, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


def note_then_wait(fifo: str, tag: str, gate: str) -> str:
    note(fifo, tag)
    _wait(gate)
    return tag


def note_then_die(fifo: str, tag: str, gate: str) -> None:
    note(fifo, tag)
    _wait(gate)
    os.kill(os.getpid(), signal.SIGKILL)


def note_then_poison(fifo: str, tag: str, gate: str) -> str:
    note(fifo, tag)
    _wait(gate)
    safepool.poison_worker("test: this worker is no longer trusted")
    return tag


def note_ignore_sigterm_then_wait(fifo: str, tag: str, gate: str) -> str:
    """Like note_then_wait, but its worker survives SIGTERM (it dies only by SIGKILL)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return note_then_wait(fifo, tag, gate)
