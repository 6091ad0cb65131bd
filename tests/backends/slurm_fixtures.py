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


def allocate(*options: str, wait: int = 90) -> str:
    """A new allocation (``salloc --no-shell``); its job id. ``--immediate`` has Slurm itself
    withdraw a request it cannot grant in ``wait`` seconds, so that a failed test leaves no
    pending job behind to hold the node from the tests after it."""
    out = subprocess.run(
        ["salloc", "--no-shell", f"--immediate={wait}", "-J", "shoal-test", *options],
        capture_output=True,
        text=True,
        timeout=wait + 30,
    )
    m = re.search(r"Granted job allocation (\d+)", out.stderr)
    assert m, f"salloc failed: {out.stderr}\n{queue()}"
    return m.group(1)


def queue() -> str:
    """What Slurm's queue holds, for a failure message."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T %M %R %Z"], capture_output=True, text=True, timeout=30
    )
    return f"squeue: {out.stdout.strip() or out.stderr.strip() or '(empty)'}"


def release(job: str) -> None:
    subprocess.run(["scancel", job], capture_output=True, timeout=30)


def usable() -> str | None:
    """None when the whole node can be allocated within a minute and a half; else why not.
    A node held by jobs of an earlier life (a machine copied while tests ran) fails every
    Slurm test after a long wait each: this says it once, at the start."""
    try:
        job = allocate("-N1", "-n16", "--gres=gpu:4")
    except (AssertionError, subprocess.TimeoutExpired) as e:
        return (
            f"Slurm answers, but its node cannot be allocated ({e}); stale jobs? "
            "tests/infra/slurm-local.sh down && tests/infra/slurm-local.sh up starts it clean"
        )
    release(job)
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip without Slurm; fail at once (every test that needs it, with the same reason)
    when it is there but its node cannot be had."""
    why = slurm_ready()
    if why:
        pytest.skip(why)
    broken = usable()
    if broken:
        pytest.fail(broken)


@pytest.fixture
def allocation(slurm: None) -> Iterator[str]:
    """One node: 16 CPUs and 4 GPUs (the whole pretend node)."""
    job = allocate("-N1", "-n16", "--gres=gpu:4")
    try:
        yield job
    finally:
        release(job)
