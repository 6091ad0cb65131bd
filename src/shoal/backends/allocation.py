"""Grid Engine and PBS allocations: a Dask worker on every host the allocation gives
(``PE_HOSTFILE``, ``PBS_NODEFILE``), each started by the allocation's own launcher, Grid
Engine's ``qrsh -inherit`` or PBS's ``pbsdsh``, so that the batch system knows and accounts
every process; never a home-made cluster protocol. The driver runs where the batch script
does; :mod:`shoal.backends.dask.spawn` starts the scheduler and the workers.

A launcher starts a command with the batch system's environment, not the driver's: the
worker's command is prefixed with ``env PYTHONPATH=...`` so that the driver's modules import
there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from shoal.backends.dask.backend import DaskBackend
from shoal.backends.dask.spawn import Launcher, start_cluster
from shoal.backends.env import python_path
from shoal.batch.nodes import allocated
from shoal.errors import BackendError


def launcher(kind: str) -> Launcher:
    """How a Grid Engine (``sge``) or PBS (``pbs``) allocation starts a command on one of
    its hosts."""
    env = ["env", f"PYTHONPATH={python_path()}"]

    def sge(name: str, cores: int, gpus: int) -> list[str]:
        return ["qrsh", "-inherit", "-nostdin", name, *env]

    def pbs(name: str, cores: int, gpus: int) -> list[str]:
        return ["pbsdsh", "-h", name, *env]

    if kind == "sge":
        return sge
    if kind == "pbs":
        return pbs
    raise BackendError(f"no launcher for {kind!r} allocations (sge or pbs)")


def in_allocation(
    *,
    python: str = sys.executable,
    timeout: float = 120.0,
    folder: Path | None = None,
    **options: Any,
) -> DaskBackend:
    """A Dask backend on a worker per host of the Grid Engine or PBS allocation this
    process runs in; ``options`` go to ``DaskBackend``."""
    hosts = allocated()
    if not hosts:
        raise BackendError(
            "the allocation backend runs inside a Grid Engine job with a parallel environment "
            "(PE_HOSTFILE) or a PBS job (PBS_NODEFILE); neither is set here"
        )
    kind = "sge" if os.environ.get("PE_HOSTFILE") else "pbs"
    return start_cluster(
        [(name, slots, 0) for name, slots in hosts],
        launcher(kind),
        python=python,
        timeout=timeout,
        folder=folder,
        **options,
    )
