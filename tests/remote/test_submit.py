"""A run sent to the "cluster" behind the SSH server, as a user does it: ``shoal remote
submit`` stages the workflow and its inputs, a batch job (the shell, then the real Grid
Engine and Slurm of this machine, submitted by the cluster's own user) runs it with the
shoal installed there, ``shoal remote list/status/tasks`` follow it, ``shoal remote fetch``
brings it back, and the results read here as any run's."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.remote.hosts import Host
from shoal.remote.ssh import Connection
from shoal.store.queries import Reader

FLOW = """
import json, shoal
from pathlib import Path

@shoal.task
def square(x):
    return x * x

@shoal.task
def total(xs, scale):
    return sum(xs) * scale

scale = json.loads(Path("inputs/params.json").read_text())["scale"]
with shoal.Workflow("squares") as wf:
    t = total([square(i).out for i in range(10)], scale)
run = wf.run(cpus=2, progress=False)
print("total:", run.result(t))
"""


def _project(tmp_path: Path, name: str = "flow.py") -> Path:
    folder = tmp_path / "project"
    (folder / "inputs").mkdir(parents=True)
    (folder / "inputs" / "params.json").write_text('{"scale": 3}')
    (folder / "inputs" / "unused.txt").write_text("not staged")
    script = folder / name
    script.write_text(textwrap.dedent(FLOW))
    return script


def _add(cli: CliRunner, host: Host, batch: str, pre_run: str) -> str:
    name = f"{host.name[:40]}-{batch}"
    args = ["host", "add", name, "--ssh", host.ssh, "--port", str(host.port)]
    args += ["-i", str(host.identity), "--known-hosts", str(host.known_hosts)]
    args += ["--batch", batch, "--workdir", f"{host.workdir}/{batch}", "--pre-run", pre_run]
    out = cli.invoke(main, args)
    assert out.exit_code == 0, out.output
    return name


def _until_ended(cli: CliRunner, run: str, timeout: float = 180) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        listed = cli.invoke(main, ["remote", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        mine = next(r for r in json.loads(listed.output) if r["name"] == run)
        if mine["state"] in ("done", "failed", "timeout", "cancelled", "unknown"):
            return dict(mine)
        assert time.monotonic() < deadline, f"the remote run did not end: {mine}"
        time.sleep(0.5)


@pytest.mark.parametrize("batch", ["shell", "sge", "slurm"])
def test_a_run_sent_to_a_host_runs_there_and_comes_back(
    batch: str,
    host: Host,
    remote_shoal: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs = {"sge": "qsub", "slurm": "sbatch"}.get(batch)
    if needs and shutil.which(needs) is None:
        pytest.skip(f"no {batch} on this machine (tests/infra)")
    if batch == "sge" and subprocess.run(["qstat"], capture_output=True).returncode != 0:
        pytest.skip("Grid Engine does not answer (tests/infra/sge-local.sh up)")
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    name = _add(cli, host, batch, remote_shoal)
    script = _project(tmp_path)
    sent = cli.invoke(
        main,
        [
            "remote",
            "submit",
            str(script),
            "--to",
            name,
            "--time",
            "5",
            "--include",
            "inputs/*.json",
        ],
    )
    assert sent.exit_code == 0, sent.output
    run = sent.output.split()[2].rstrip(":")  # "remote run NAME: batch job ..."
    mine = _until_ended(cli, run)
    assert mine["state"] in ("done", "unknown"), mine  # unknown: Slurm without accounting
    status = cli.invoke(main, ["remote", "status", run])
    assert status.exit_code == 0 and "succeeded 11" in status.output, status.output
    tasks = cli.invoke(main, ["remote", "tasks", run, "--state", "succeeded", "--limit", "2"])
    assert tasks.exit_code == 0 and tasks.output.count("square") == 2
    fetched = cli.invoke(main, ["remote", "fetch", run, "--to", str(tmp_path / "back")])
    assert fetched.exit_code == 0, fetched.output
    back = tmp_path / "back"
    assert (back / "inputs" / "params.json").exists() and not (
        back / "inputs" / "unused.txt"
    ).exists()
    (rundir,) = back.glob("squares-*")
    with Reader(rundir) as r:
        assert r.result(r.find("total").id) == 3 * sum(i * i for i in range(10))
    Connection(Host(**{**host.model_dump(), "name": name})).drop()


def test_a_hostile_file_name_is_staged_and_run_as_a_name(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, "shell", remote_shoal)
    script = _project(tmp_path, "it's; touch pwned.py")
    sent = cli.invoke(
        main,
        ["remote", "submit", str(script), "--to", name, "--time", "5", "--include", "inputs/*"],
    )
    assert sent.exit_code == 0, sent.output
    run = sent.output.split()[2].rstrip(":")
    assert _until_ended(cli, run)["state"] == "done"
    conn = Connection(Host(**{**host.model_dump(), "name": name}))
    home = conn.run(["find", ".", "-name", "pwned*"]).stdout
    assert home.strip() == "", home
    conn.drop()


def test_a_refused_submission_is_recorded_with_the_reason(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm on this machine (tests/infra)")
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, "slurm", remote_shoal)
    script = _project(tmp_path)
    sent = cli.invoke(
        main,
        ["remote", "submit", str(script), "--to", name, "--option", "--partition=nope"],
    )
    assert sent.exit_code == 2 and "sbatch refused the job" in sent.output
    assert "invalid partition" in sent.output.lower()
    listed = json.loads(cli.invoke(main, ["remote", "list", "--json"]).output)
    assert listed[0]["state"] == "failed" and "sbatch refused" in listed[0]["note"]
    Connection(Host(**{**host.model_dump(), "name": name})).drop()
