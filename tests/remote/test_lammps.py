"""The LAMMPS example (examples/lj_liquid.py) sent to the "cluster" through its real Grid
Engine and Slurm: real ``lmp`` runs on two MPI ranks each, launched the way each batch system
wants (``mpiexec`` on the slots of a Grid Engine parallel environment; ``srun --mpi=pmix`` job
steps in a Slurm allocation), and the analysis's physically checked number read back here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.remote.hosts import Host
from shoal.remote.ssh import Connection
from shoal.store.queries import Reader

from .test_submit import _add, _need, _until_ended

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.usefixtures("lammps")
@pytest.mark.parametrize("batch", ["sge", "slurm"])
def test_the_lammps_example_runs_through_a_batch_system(
    batch: str,
    host: Host,
    remote_shoal: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    _need(batch, request)
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, batch, remote_shoal)
    slots = ["--option", "-pe smp 2"] if batch == "sge" else []  # two ranks need two slots
    args = ["remote", "submit", str(EXAMPLES / "lj_liquid.py"), "--to", name, "--time", "10"]
    sent = cli.invoke(main, [*args, "--include", "lammps/*", *slots, "--quick"])
    assert sent.exit_code == 0, sent.output
    run = sent.output.split()[2].rstrip(":")
    mine = _until_ended(cli, run, timeout=300)
    assert mine["state"] == "done", mine
    fetched = cli.invoke(main, ["remote", "fetch", run, "--to", str(tmp_path / "back")])
    assert fetched.exit_code == 0, fetched.output
    (rundir,) = (tmp_path / "back").glob("lj-liquid-*")
    with Reader(rundir) as r:
        out = r.result(r.find("analyse").id)
        runs = [t for t in r.tasks() if t.name.startswith("lj-T")]
    assert out["ok"], out["table"]
    assert out["worst"] < 0.02 and out["slope"] > 0
    assert [row["T"] for row in out["rows"]] == [1.0, 1.5, 2.0]
    for t in runs:  # each on two ranks, in its own task folder
        log = (rundir / "tasks" / str(t.id) / "log.lammps").read_text()
        assert "on 2 procs" in log
    batch_out = (tmp_path / "back" / "batch.out").read_text()
    assert "checks passed" in batch_out and "(openmpi)" in batch_out, batch_out[-2000:]
    assert json.loads(cli.invoke(main, ["remote", "list", "--json"]).output)[0]["state"] == "done"
    Connection(host.but(name=name)).drop()
