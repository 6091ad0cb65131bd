"""A module that says which process imported it (``HEAVY_IMPORTS``: a file to append to), to
see that a run imports it once, in the fork server, not in every worker."""

from __future__ import annotations

import os

from jobflow import job

if os.environ.get("HEAVY_IMPORTS"):
    with open(os.environ["HEAVY_IMPORTS"], "a") as f:
        f.write(f"{os.getpid()}\n")


@job
def parent_pid() -> tuple[int, int]:
    """The process that made the worker this job runs in (the fork server), and its parent."""
    import psutil

    return os.getppid(), psutil.Process(os.getppid()).ppid()
