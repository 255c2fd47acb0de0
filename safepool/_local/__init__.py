"""The local engine: worker processes on this machine, run by one manager thread.

``pool`` is its public face and the manager loop; the other modules are the
parts of the manager's work (see ``pool``'s docstring). The worker-process
side is ``safepool._worker``.
"""

from safepool._local.pool import Pool
from safepool._local.state import WorkItem

__all__ = ["Pool", "WorkItem"]
