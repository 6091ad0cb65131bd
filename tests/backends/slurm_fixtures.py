"""A real Slurm for tests: skip with the reason when there is none; allocations on demand.

``.ci/run`` starts a single-node Slurm (``tests/infra/slurm-local.sh up``: one node pretending
16 CPUs and 4 GPUs). Tests get allocations with ``salloc --no-shell`` and cancel them after.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest


def slurm_ready() -> str | None:
    """None when Slurm answers; else why the Slurm tests skip."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return "Slurm is not installed (tests/infra/slurm-local.sh up installs and starts it)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "sinfo does not answer: is slurmctld running? (tests/infra/slurm-local.sh up)"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mixed", "allocated") for s in states):
        return f"no usable Slurm node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
    return None


def allocate(*options: str) -> str:
    """A new allocation (``salloc --no-shell``); its job id."""
    out = subprocess.run(
        ["salloc", "--no-shell", "-J", "shoal-test", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Granted job allocation (\d+)", out.stderr)
    assert m, f"salloc failed: {out.stderr}"
    return m.group(1)


def release(job: str) -> None:
    subprocess.run(["scancel", job], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def slurm() -> None:
    why = slurm_ready()
    if why:
        pytest.skip(why)


@pytest.fixture
def allocation(slurm: None) -> Iterator[str]:
    """One node: 16 CPUs and 4 GPUs (the whole pretend node)."""
    job = allocate("-N1", "-n16", "--gres=gpu:4")
    try:
        yield job
    finally:
        release(job)
