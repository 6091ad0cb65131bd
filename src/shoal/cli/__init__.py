"""The command line: ``shoal run``, ``status``, ``tasks`` and ``logs`` (see ``main.py``)."""
