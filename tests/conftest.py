"""Shared fixtures. Every test that runs a workflow puts its run directories in a tmp folder.

Every scheduler in the tests runs in validation mode (shoal/core/validate.py): its invariants
are checked after every step, in this process and in the drivers that tests start as
subprocesses (they inherit the environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.backends.slurm_fixtures import slurm  # noqa: F401  (Slurm tests anywhere)

# Open MPI refuses to run as root without these, and oversubscribes only when told to.
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
os.environ["SHOAL_VALIDATE"] = "1"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A folder for run directories: pass as ``wf.run(base=base)``."""
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture
def lammps() -> None:
    """Skip without a LAMMPS binary and an MPI launcher; fail instead where
    ``SHOAL_NEED_LAMMPS`` is set (CI: ``.ci/run`` installs Debian's lammps)."""
    import shutil

    missing = [p for p in ("lmp", "mpiexec") if shutil.which(p) is None]
    if missing:
        what = f"needs {' and '.join(missing)} on PATH (Debian: apt-get install lammps)"
        if os.environ.get("SHOAL_NEED_LAMMPS"):
            pytest.fail(f"{what}, and SHOAL_NEED_LAMMPS is set (CI): .ci/run installs it")
        pytest.skip(what)
