"""The Dask engine: an executor's calls run in a safepool pool on each Dask worker.

``engine`` is the client side (the data flow is drawn there); ``node`` is what
runs in each Dask worker process. Imported only for ``Executor(cluster=...)``:
``import safepool`` never imports dask.
"""

from safepool._dask.engine import ClusterFuture, DaskEngine

__all__ = ["ClusterFuture", "DaskEngine"]
