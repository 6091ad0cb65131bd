"""The Dask backend: shoal's ready tasks on the workers of a Dask distributed cluster.

* ``backend.py``: ``DaskBackend``, in the driver.
* ``job.py``: what runs inside a Dask worker for one attempt (Dask imports it there by name);
  it imports only ``backends.execute`` of shoal.

``dask/`` never imports ``slurm/``: Dask workers started as Slurm steps are Slurm's business
(``slurm/dask_workers.py``), handed to the backend as its ``spawned`` processes. Names are
imported on first use (PEP 562), so that a Dask worker importing ``job.py`` does not import
the driver's side.
"""

from __future__ import annotations

from shoal.lazy import exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

_WHERE = {
    "ASK": "shoal.backends.dask.backend",
    "DaskBackend": "shoal.backends.dask.backend",
    "LOST": "shoal.backends.dask.backend",
    "Spawned": "shoal.backends.dask.backend",
    "security": "shoal.backends.dask.backend",
    "worker_nodes": "shoal.backends.dask.backend",
}

__all__ = ["ASK", "LOST", "DaskBackend", "Spawned", "security", "worker_nodes"]

__getattr__, __dir__ = exports("shoal.backends.dask", _WHERE, globals())

if TYPE_CHECKING:
    from shoal.backends.dask.backend import ASK, LOST, DaskBackend, Spawned, security, worker_nodes
