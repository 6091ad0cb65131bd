"""The local backend: one node, this machine's processes.

* ``backend.py``: ``LocalBackend``, the routing of jobs (workers or child processes) and the
  pinning environment of a placement.
* ``workers.py``: the pool of persistent workers as the driver keeps it (``LocalBackend`` is a
  ``WorkerPool``).
* ``worker_main.py``, ``zygote.py``, ``wire.py``: what runs in the worker processes and the
  fork server, and their message framing. These import only the standard library and
  ``backends.execute``: a worker starts in milliseconds, and this package's names are
  imported on first use (PEP 562) so that importing ``shoal.backends.local.worker_main``
  costs nothing more.

Child processes of the driver (isolated and multi-rank tasks) run through the shared
``backends/processes.py``; the placement environment comes from ``backends/env.py``.
"""

from __future__ import annotations

from shoal.lazy import exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

_WHERE = {
    "LocalBackend": "shoal.backends.local.backend",
    "MAX_FRESH_DEATHS": "shoal.backends.local.workers",
    "THREAD_VARS": "shoal.backends.env",
    "TRUST": "shoal.backends.local.workers",
    "detect_gpus": "shoal.backends.env",
    "fold": "shoal.backends.env",
}

__all__ = ["MAX_FRESH_DEATHS", "THREAD_VARS", "TRUST", "LocalBackend", "detect_gpus", "fold"]

__getattr__, __dir__ = exports("shoal.backends.local", _WHERE, globals())

if TYPE_CHECKING:
    from shoal.backends.env import THREAD_VARS, detect_gpus, fold
    from shoal.backends.local.backend import LocalBackend
    from shoal.backends.local.workers import MAX_FRESH_DEATHS, TRUST
