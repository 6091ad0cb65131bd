"""The imperative shell: the driver loop, the run directory, and the user's Run handle.

The driver persists each batch of transitions before acting on it (see ``driver.py``); ``api``
validates a workflow completely before the run directory is even created.

* ``api.py``: ``run``/``submit``/``resume``; ``options.py``: ``RunOptions``, defined once;
  ``session.py``: the run directory, lock, log and store of one run, new or resumed;
* ``driver.py``: the loop and nothing else; ``work.py``: the run's records and work added at
  run time; ``outputs.py``: outputs kept in memory or read back; ``jobs.py``: jobs built from
  dispatches; ``requests.py``: requests from other processes; ``steering/``: rules and
  strategies;
* ``run.py``, ``status.py``, ``progress.py``, ``imports.py``: the Run handle, status.json, the
  progress bar, the user's imports on resume.

Rules of this package: requests and steering see the driver's parts through narrow protocols,
never the driver itself; the core is changed only through ``Scheduler.handle``.
"""

from shoal.runtime.api import run, submit
from shoal.runtime.run import Run

__all__ = ["Run", "run", "submit"]
