"""Execution backends behind one contract (``base.Backend``); ``local`` is the default.

Nothing is imported here on purpose: worker processes import ``shoal.backends.worker`` and
should not pay for the driver-side modules.
"""
