"""Which backend a run gets: by name, by object, or by the environment it runs in."""

from __future__ import annotations

import os

from shoal.backends.base import Backend
from shoal.errors import DefinitionError


def make_backend(
    backend: Backend | str | None,
    cpus: int | None,
    gpus: int | None,
    memory: int | str | None,
    pin: bool | str | None,
    launcher: str,
    mpi: str | None = None,
) -> Backend:
    if isinstance(backend, Backend):
        if cpus is not None or gpus is not None:
            raise DefinitionError("cpus=/gpus= pretend a local node; give them to the backend")
        return backend
    if backend is None and cpus is None and gpus is None and memory is None:
        backend = default_backend()
    if backend == "slurm":
        from shoal.backends.slurm import SlurmBackend

        return SlurmBackend(mpi=mpi)
    if backend == "dask":
        from shoal.backends.dask import DaskBackend

        return DaskBackend()
    if backend == "allocation":
        from shoal.backends.allocation import in_allocation

        return in_allocation()
    if backend == "flux":
        from shoal.backends.flux import FluxBackend

        return FluxBackend()
    if backend in (None, "local"):
        from shoal.backends.local import LocalBackend
        from shoal.spec.options import parse_memory

        mem = parse_memory(memory) if memory is not None else None
        return LocalBackend(cpus=cpus, gpus=gpus, memory=mem, pin=pin, launcher=launcher)
    raise DefinitionError(
        f"unknown backend {backend!r}: shoal offers 'local' (the default outside Slurm), "
        "'slurm' (the default inside an allocation), 'allocation' (the default inside a Grid "
        "Engine or PBS allocation of several hosts), 'dask' (with SHOAL_DASK_ADDRESS or a "
        "DaskBackend(...) object) and 'flux' (experimental: only when asked for by name)"
    )


def default_backend() -> str:
    """'slurm' inside a Slurm allocation (SLURM_JOB_ID), 'allocation' inside a Grid Engine or
    PBS allocation of several hosts, else 'local'; SHOAL_BACKEND decides when set. Flux is
    experimental (its backend has never run against a real broker here), so it is never
    chosen silently, even inside a Flux instance: ask for it by name."""
    chosen = os.environ.get("SHOAL_BACKEND")
    if chosen:
        return chosen
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm"
    from shoal.batch.nodes import allocated

    hosts = allocated()
    if hosts is not None and len(hosts) > 1:  # one host: the local backend, on its slots
        return "allocation"
    return "local"
