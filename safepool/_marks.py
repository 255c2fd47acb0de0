"""A few 64-bit numbers shared between the parent and one worker, without a lock.

The worker writes the number of each task it starts into slot 0 before the
task runs; the parent writes the number of a task it stopped while that task
waited in the worker's pipe into one of the other slots, and the worker skips
such a task. Each slot has one writer, so no lock is needed.

The memory is a one-page shared mapping of an anonymous file (``memfd`` on
Linux). Its descriptor crosses to the worker as the worker starts (like a
multiprocessing Lock) and is closed once mapped. (``mmap`` keeps a duplicate
of it while mapped: the parent closes the mapping when it forgets the worker.)
"""

from __future__ import annotations

import mmap
import os

TYPE_CHECKING = False  # not typing's: a worker imports this module (see _worker)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Marks"]


def _anonymous_file(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("safepool-marks", os.MFD_CLOEXEC)
    else:  # pragma: no cover - POSIX without memfd
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


class Marks:
    """``slots`` unsigned 64-bit integers, all 0 at first, indexable like a list."""

    __slots__ = ("_fd", "_map", "_view")

    def __init__(self, slots: int) -> None:
        size = max(slots * 8, mmap.PAGESIZE)
        self._fd: int | None = _anonymous_file(size)
        self._map = mmap.mmap(self._fd, size)
        self._view = memoryview(self._map).cast("Q")

    @classmethod
    def _attach(cls, size: int, dup: Any) -> Marks:
        fd = dup.detach()
        try:
            shared = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        marks = cls.__new__(cls)
        marks._fd = None
        marks._map = shared
        marks._view = memoryview(shared).cast("Q")
        return marks

    def __reduce__(self) -> tuple[Any, ...]:
        if self._fd is None:
            raise TypeError("Marks cross to a worker only as it starts")
        from multiprocessing.reduction import DupFd  # the parent's side only

        return (Marks._attach, (len(self._map), DupFd(self._fd)))

    def sent(self) -> None:
        """The worker has its copy: close this side's descriptor (the mapping stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Unmap (the parent, once the worker is gone and its tasks are accounted for)."""
        self.sent()
        self._view.release()
        self._map.close()

    @property
    def words(self) -> memoryview:
        """The shared words themselves, for a caller that reads and writes them often."""
        return self._view

    def __getitem__(self, index: int) -> int:
        return int(self._view[index])

    def __setitem__(self, index: int, value: int) -> None:
        self._view[index] = value
