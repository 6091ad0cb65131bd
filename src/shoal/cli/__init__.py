"""The command line: ``shoal run``, ``status``, ``tasks`` and ``logs`` (see ``main.py``).

Rules of this package: it is the top layer; nothing imports it. It talks to the runtime through
the public functions and, for what the command line sets for the runs of a script (progress,
``--time-left``), through ``shoal.runtime.options.defaults()``: never a shared global.
"""
