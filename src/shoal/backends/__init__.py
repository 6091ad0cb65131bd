"""Execution backends behind one contract (``base.Backend``); ``local`` is the default."""

from shoal.backends.base import Backend, Job
from shoal.backends.local import LocalBackend

__all__ = ["Backend", "Job", "LocalBackend"]
