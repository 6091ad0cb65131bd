"""The Slurm backend: tasks as job steps inside the allocation the driver runs in.

* ``backend.py``: ``SlurmBackend``, the routing of jobs (steps, or persistent workers).
* ``parse.py``: pure helpers that build ``srun`` lines and parse Slurm's output; they run
  nothing and are tested on recorded output.
* ``query.py``: the ``scontrol``/``squeue`` calls that read the allocation.
* ``steps.py``: steps as child processes of the driver (``backends/processes.py``), tried
  again when Slurm refuses a step for a passing reason.
* ``dask_workers.py``: persistent Dask workers started as steps, one per node, for Python
  tasks. It imports ``dask/``; nothing in ``dask/`` imports ``slurm/``.

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from shoal.lazy import exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

_PARSE = "shoal.backends.slurm.parse"
_QUERY = "shoal.backends.slurm.query"
_WHERE = {
    "BACKOFF": "shoal.backends.slurm.steps",
    "SlurmBackend": "shoal.backends.slurm.backend",
    "TRANSIENT": _PARSE,
    "allocation": _QUERY,
    "can_bind": _PARSE,
    "cpu_bind": _PARSE,
    "end_time": _QUERY,
    "field": _PARSE,
    "hostfile_text": _PARSE,
    "ids": _PARSE,
    "in_allocation": "shoal.backends.slurm.dask_workers",
    "job_layout": _PARSE,
    "run": _QUERY,
    "signalled": _PARSE,
    "step_argv": _PARSE,
    "transient": _PARSE,
}

__all__ = [
    "BACKOFF",
    "TRANSIENT",
    "SlurmBackend",
    "allocation",
    "can_bind",
    "cpu_bind",
    "end_time",
    "field",
    "hostfile_text",
    "ids",
    "in_allocation",
    "job_layout",
    "run",
    "signalled",
    "step_argv",
    "transient",
]

__getattr__, __dir__ = exports("shoal.backends.slurm", _WHERE, globals())

if TYPE_CHECKING:
    from shoal.backends.slurm.backend import SlurmBackend
    from shoal.backends.slurm.dask_workers import in_allocation
    from shoal.backends.slurm.parse import (
        TRANSIENT,
        can_bind,
        cpu_bind,
        field,
        hostfile_text,
        ids,
        job_layout,
        signalled,
        step_argv,
        transient,
    )
    from shoal.backends.slurm.query import allocation, end_time, run
    from shoal.backends.slurm.steps import BACKOFF
