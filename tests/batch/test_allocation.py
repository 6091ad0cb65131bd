"""A run inside a real Grid Engine allocation with a parallel environment, on the
allocation backend: a Dask worker per host started by Grid Engine's own ``qrsh -inherit``
(so the batch system starts, knows and accounts it), not by the driver."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal.backends.allocation import launcher
from shoal.batch import JobState, local, system
from shoal.store.queries import Reader

FLOW = """
import json, os, sys, shoal

def ancestors():
    names, pid = [], os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/comm") as fh:
            names.append((pid, fh.read().strip()))
        pid = int(fields[1])
    return names

@shoal.task
def where(i):
    return ancestors()

with shoal.Workflow("alloc") as wf:
    tasks = [where(i) for i in range(4)]
run = wf.run(base=sys.argv[1], progress=False)
print(json.dumps({"driver": os.getpid(), "chains": [run.result(t) for t in tasks]}))
"""


def test_the_launchers_of_grid_engine_and_pbs() -> None:
    sge = launcher("sge")("n002", 16, 0)
    assert sge[:4] == ["qrsh", "-inherit", "-nostdin", "n002"] and sge[4] == "env"
    assert launcher("pbs")("n002", 16, 0)[:3] == ["pbsdsh", "-h", "n002"]


@pytest.mark.skipif(shutil.which("qsub") is None, reason="no Grid Engine here (tests/infra)")
def test_a_grid_engine_allocation_runs_tasks_on_workers_its_launcher_started(
    tmp_path: Path,
) -> None:
    if subprocess.run(["qstat"], capture_output=True).returncode != 0:
        pytest.skip("Grid Engine's qmaster does not answer (tests/infra/sge-local.sh up)")
    flow = tmp_path / "flow.py"
    flow.write_text(textwrap.dedent(FLOW))
    out = tmp_path / "out.json"
    job = tmp_path / "job.sh"
    src = Path(__file__).parents[2] / "src"
    job.write_text(
        "#!/bin/bash\n"
        f"cd {tmp_path}\n"
        "export SHOAL_BACKEND=allocation\n"
        f"export PYTHONPATH={src}\n"
        f"{sys.executable} flow.py {tmp_path / 'runs'} > {out}\n"
    )
    sge = system("sge")
    submitted = local(
        ["qsub", "-terse", "-pe", "smp", "2", "-o", str(tmp_path / "job.out"), "-j", "y", str(job)]
    )
    jid = sge.submitted(submitted)
    deadline = time.monotonic() + 180
    while not sge.ask(local, [jid])[jid].state.ended:
        assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()
        time.sleep(0.5)
    assert sge.ask(local, [jid])[jid].state is JobState.DONE, (tmp_path / "job.out").read_text()
    got = json.loads(out.read_text())
    for chain in got["chains"]:
        pids = [p for p, _ in chain]
        names = [n for _, n in chain]
        assert got["driver"] not in pids  # not a child of the driver
        assert "sge_shepherd" in names  # started by Grid Engine (qrsh -inherit)
    (rundir,) = (tmp_path / "runs").glob("alloc-*")
    with Reader(rundir) as r:
        assert r.meta()["backend"] == "dask"
        assert r.counts() == {"succeeded": 4}
