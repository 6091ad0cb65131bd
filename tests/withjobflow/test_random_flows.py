"""Random jobflow flows run by shoal leave the JobStore that jobflow's ``run_locally`` leaves
(randomflows.py). Every feature of the jobflow support meets the others here: references
through replacements and into additional stores, failures under Responses, stop_children,
and shoal's options (prefetch, the local or the Dask backend)."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jobflow", reason="jobflow is not installed: pip install -e '.[jobflow]'")

from jobflow import run_locally as jf_run_locally

import shoal

from .compare import new_store, same
from .randomflows import generate

SEEDS = range(int(os.environ.get("SHOAL_JOBFLOW_SEEDS", "8")))  # more for a soak


@pytest.mark.parametrize("seed", SEEDS)
def test_random_flow_as_jobflow(seed: int, base: Path, dask_cluster: Any) -> None:
    flow = generate(seed)
    rng = random.Random(1000 + seed)
    options: dict[str, Any] = {"prefetch": rng.choice([0, None]), "cpus": 2}
    if seed % 4 == 3:
        from shoal.backends.dask import DaskBackend

        options = {"backend": DaskBackend(address=dask_cluster.address)}
    theirs, ours = new_store("data"), new_store("data")
    jf_run_locally(copy.deepcopy(flow), store=theirs, log=False)
    run = shoal.run(copy.deepcopy(flow), store=ours, progress=False, base=base, **options)
    assert run.state in ("failed", "succeeded"), (seed, run.state)
    same(theirs, ours, flow)
