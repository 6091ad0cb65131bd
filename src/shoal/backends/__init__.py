"""Execution backends behind one contract (``base.Backend``); ``local`` is the default.

* ``base.py`` (the contract and ``Job``), ``env.py`` (the placement environment: pinning,
  GPU and thread variables, the import path of started interpreters), ``execute.py`` (one
  Python call where a task runs), ``isolated.py`` (a task in a fresh process) and
  ``processes.py`` (child processes in per-slot chains, for ``local`` and ``slurm``) are
  shared by the backends.
* ``local/``, ``dask/``, ``slurm/`` and ``flux.py`` are the backends. A backend imports the
  shared modules and the lower layers (spec, core, errors), never runtime, store, config or
  cli; and never another backend's private names. ``slurm/`` may import ``dask/`` (its
  persistent workers are Dask workers); ``dask/`` never imports ``slurm/``.

Nothing is imported here on purpose, and the backend packages import their names on first
use: worker processes import ``shoal.backends.local.worker_main`` (or, on Dask workers,
``shoal.backends.dask.job``) and should not pay for the driver-side modules.
"""
