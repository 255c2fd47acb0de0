"""Stopping a worker together with every process its task started.

Workers lead their own process group (see ``_worker``), so one ``killpg``
reaches the worker and the children that stayed in its group. Children that
left the group (``start_new_session=True``, ``setsid``) are found with psutil
before the first signal, while they are still the worker's descendants.
"""

from __future__ import annotations

import os
import signal

import psutil

__all__ = ["ProcessTree"]


class ProcessTree:
    """A worker and its descendants, snapshotted when the stop begins."""

    __slots__ = ("_members", "pgid")

    def __init__(self, pid: int) -> None:
        self.pgid = pid
        self._members: list[psutil.Process] = []
        try:
            root = psutil.Process(pid)
            self._members = [root, *root.children(recursive=True)]
        except psutil.Error:
            pass

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's group and to every process in the snapshot."""
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in self._members:
            try:
                # psutil checks the process is the one snapshotted (no pid reuse).
                proc.send_signal(sig)
            except psutil.Error:
                pass

    def refresh(self) -> None:
        """Add descendants started since the snapshot, while the worker is still alive."""
        if not self._members:
            return
        try:
            extra = self._members[0].children(recursive=True)
        except psutil.Error:
            return
        known = {p.pid for p in self._members}
        self._members += [p for p in extra if p.pid not in known]
