"""Persistent Dask workers inside the Slurm allocation the driver runs in (the Slurm backend's
``python="workers"``): a Dask scheduler here, and one Dask worker per node started as a job
step (``srun``), holding all of the node's cores and GPUs. Python tasks then start in
microseconds instead of paying an interpreter per task; commands run as child processes of
the workers.

This is Slurm code that makes a :class:`~shoal.backends.dask.backend.DaskBackend`: it imports
the Dask backend, never the other way round.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from shoal.backends.dask.backend import DaskBackend
from shoal.backends.dask.spawn import start_cluster
from shoal.backends.slurm.parse import worker_step
from shoal.backends.slurm.query import allocation
from shoal.errors import BackendError


def in_allocation(
    job: str | None = None,
    *,
    host: str | None = None,
    python: str = sys.executable,
    timeout: float = 120.0,
    overlap: bool = False,
    folder: Path | None = None,
    **options: Any,
) -> DaskBackend:
    """A Dask backend on persistent workers inside Slurm allocation ``job`` (default
    ``SLURM_JOB_ID``), started as described in the module's docstring. ``overlap`` starts the
    worker steps with ``--overlap``, so that job steps can still be created beside them (the
    Slurm backend does this for its Python tasks); ``options`` go to ``DaskBackend``.

    The scheduler and the workers listen on loopback when the allocation is this one node,
    else on this node's address (``host``), never on every interface, and speak TLS with
    a key made for this run: nobody without it can connect. Their log, the scheduler file
    and the key are in ``folder`` (the run directory's ``dask/``; a temporary folder,
    removed on close, when none is given). A worker step that ends is started again, up to
    REVIVALS times per node. Everything is stopped when the backend closes."""
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job:
        raise BackendError("dask_workers.in_allocation runs inside a Slurm allocation")
    nodes = allocation(job)

    def step(name: str, cores: int, gpus: int) -> list[str]:
        return worker_step(str(job), name, cores, overlap)

    hosts = [(n.name, len(n.cores), len(n.gpus)) for n in nodes]
    return start_cluster(
        hosts, step, host=host, python=python, timeout=timeout, folder=folder, **options
    )
