"""The imperative shell: the driver loop, the run directory, and the user's Run handle.

The driver persists each batch of transitions before acting on it (see ``driver.py``); ``api``
validates a workflow completely before the run directory is even created.
"""

from shoal.runtime.api import run, submit
from shoal.runtime.run import Run

__all__ = ["Run", "run", "submit"]
