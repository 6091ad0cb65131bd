"""Fixtures shared by the backend tests: a real Slurm (and allocations), a real Dask cluster."""

from .dask_fixtures import dask_cluster  # noqa: F401
from .slurm_fixtures import allocation  # noqa: F401
