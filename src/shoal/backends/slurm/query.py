"""The Slurm commands the backend runs to read its allocation (``scontrol``, ``squeue``)."""

from __future__ import annotations

import os
import shlex
import time

from shoal.backends.slurm.parse import field, job_layout
from shoal.batch import local
from shoal.core.resources import Node
from shoal.errors import BackendError, BatchError


def run(argv: list[str], timeout: float = 60) -> str:
    """Run a Slurm command; its stdout, or a BackendError that says what went wrong."""
    try:
        out = local(argv, timeout=timeout)
    except BatchError as err:
        raise BackendError(f"{err} (the Slurm backend runs Slurm's commands)") from None
    if out.code != 0:
        raise BackendError(f"{shlex.join(argv)} failed: {out.stderr.strip() or out.code}")
    return out.stdout


def allocation(job_id: str) -> list[Node]:
    """The nodes of allocation ``job_id``: their names from ``SLURM_JOB_NODELIST`` (the job's
    ``NodeList`` when the driver is not inside that job), expanded by ``scontrol show
    hostnames``; the core ids and GPU indices of each from ``scontrol show job -d``."""
    detail = run(["scontrol", "show", "job", "-d", job_id])
    inside = os.environ.get("SLURM_JOB_ID") == job_id
    nodelist = os.environ.get("SLURM_JOB_NODELIST") if inside else None
    nodelist = nodelist or field(detail, "NodeList")
    if not nodelist or nodelist == "(null)":
        raise BackendError(f"allocation {job_id} has no nodes yet: is the job running?")
    names = run(["scontrol", "show", "hostnames", nodelist]).split()
    layout: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for expr, cores, gpus in job_layout(detail):
        for name in run(["scontrol", "show", "hostnames", expr]).split():
            layout[name] = (cores, gpus)
    missing = [n for n in names if n not in layout]
    if missing:
        raise BackendError(
            f"scontrol show job -d {job_id} gives no core ids for {', '.join(missing)}"
        )
    return [Node(n, *layout[n]) for n in names]


def end_time(job_id: str) -> float | None:
    """When allocation ``job_id`` ends (epoch seconds), or None when it has no time limit."""
    text = run(["squeue", "-h", "-j", job_id, "-o", "%e"]).strip()
    if not text or text in ("N/A", "NONE", "Unknown"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
