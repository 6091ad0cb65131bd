"""A run sent to the "cluster" behind the SSH server, as a user does it: ``shoal remote
submit`` stages the workflow and its inputs, a batch job (the shell, then the real Grid
Engine and Slurm of this machine, submitted by the cluster's own user) runs it with the
shoal installed there, ``shoal remote list/status/tasks`` follow it, ``shoal remote fetch``
brings it back, and the results read here as any run's."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.remote.follow import FINAL
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


def _need(batch: str, request: pytest.FixtureRequest) -> None:
    """Skip when the batch system is not on this machine (tests/infra starts them); for
    Slurm, fail at once when its node cannot be had (the ``slurm`` fixture)."""
    if batch == "slurm":
        request.getfixturevalue("slurm")
    needs = {"sge": "qsub", "slurm": "sbatch"}.get(batch)
    if needs and shutil.which(needs) is None:
        pytest.skip(f"no {batch} on this machine (tests/infra)")
    if batch == "sge" and subprocess.run(["qstat"], capture_output=True).returncode != 0:
        pytest.skip("Grid Engine does not answer (tests/infra/sge-local.sh up)")


def _until_ended(cli: CliRunner, run: str, timeout: float = 180) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        listed = cli.invoke(main, ["remote", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        mine = next(r for r in json.loads(listed.output) if r["name"] == run)
        if mine["state"] in FINAL:
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
    request: pytest.FixtureRequest,
) -> None:
    _need(batch, request)
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
    assert mine["state"] == "done", mine  # as the job's chain.log says
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
    Connection(host.but(name=name)).drop()


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
    conn = Connection(host.but(name=name))
    home = conn.run(["find", ".", "-name", "pwned*"]).stdout
    assert home.strip() == "", home
    conn.drop()


@pytest.mark.usefixtures("slurm")
def test_a_refused_submission_is_recorded_with_the_reason(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    Connection(host.but(name=name)).drop()


LONG = """
import time, shoal

@shoal.task
def step(i, seconds):
    time.sleep(seconds)
    return i

with shoal.Workflow("long") as wf:
    for i in range(NUMBER):
        step(i, SECONDS)
wf.run(cpus=2, progress=False)
"""


def _chain(cli: CliRunner, tmp_path: Path, name: str, number: int, seconds: float) -> str:
    script = tmp_path / "long.py"
    script.write_text(
        textwrap.dedent(LONG).replace("NUMBER", str(number)).replace("SECONDS", str(seconds))
    )
    args = ["remote", "submit", str(script), "--to", name, "--until-done"]
    sent = cli.invoke(main, [*args, "--time", "0:20", "--time-left", "0.1"])
    assert sent.exit_code == 0, sent.output
    return sent.output.split()[2].rstrip(":")


def _links(host: Host, name: str, run: str) -> list[dict[str, object]]:
    from shoal.remote import registry

    conn = Connection(host.but(name=name))
    text = conn.run(["cat", f"{registry.get(run).folder}/chain.log"]).stdout
    conn.drop()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("batch", ["slurm", "sge"])
def test_a_chain_of_allocations_carries_a_run_to_its_end(
    batch: str,
    host: Host,
    remote_shoal: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Each allocation lasts 20 s and its driver stops starting tasks 6 s before the end;
    30 s of work (60 tasks of 1 s on 2 cores) needs at least two allocations, each queued by
    the one before (afterany / -hold_jid), with no workstation taking part."""
    _need(batch, request)
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, batch, remote_shoal)
    run = _chain(cli, tmp_path, name, 60, 1.0)
    mine = _until_ended(cli, run, timeout=400)
    assert mine["state"] == "done", mine
    links = _links(host, name, run)
    ends = [e for e in links if e["event"] == "end"]
    assert len(ends) >= 2, links
    assert [e["decision"] for e in ends] == ["continue"] * (len(ends) - 1) + ["done"]
    assert ends[-1]["finished"] == 60 and ends[-1]["code"] == 0
    jobs = [e["job"] for e in links if e["event"] == "start"]
    assert len(set(jobs)) == len(jobs) == len(ends)  # each link its own batch job
    status = cli.invoke(main, ["remote", "status", run])
    assert "succeeded 60" in status.output, status.output


@pytest.mark.usefixtures("slurm")
def test_a_chain_that_finishes_nothing_stops_and_says_why(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task longer than an allocation would restart forever: the chain stops after the
    first link that finished no task."""
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, "slurm", remote_shoal)
    run = _chain(cli, tmp_path, name, 1, 60.0)
    mine = _until_ended(cli, run, timeout=300)
    assert mine["state"] == "stalled", mine
    assert "finished no task" in str(mine["note"]) and "longer --time" in str(mine["note"])


def test_the_dashboard_of_a_remote_run_through_the_ssh_connection(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served on the host, bound to its 127.0.0.1 and needing the token even to read (a
    login node is shared); reached here through the master connection's forward."""
    import urllib.error
    import urllib.request

    from shoal.remote import hosts, registry
    from shoal.remote.tunnel import open_tunnel

    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, "shell", remote_shoal)
    sent = cli.invoke(
        main, ["remote", "submit", str(_project(tmp_path)), "--to", name, "--include", "inputs/*"]
    )
    run = sent.output.split()[2].rstrip(":")
    _until_ended(cli, run)
    conn = Connection(hosts.find(name))
    tunnel = open_tunnel(conn, registry.get(run).folder)
    try:
        url = f"http://127.0.0.1:{tunnel.local_port}/api/runs"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code == 401  # no token, no data
        ask = urllib.request.Request(url, headers={"X-Shoal-Token": tunnel.token})
        with urllib.request.urlopen(ask, timeout=30) as resp:
            runs = json.loads(resp.read())["runs"]
        assert [r["run"] for r in runs] == ["squares"] and runs[0]["life"] == "finished"
    finally:
        tunnel.close()
    gone = conn.run(["sh", "-c", 'kill -0 "$1" 2>/dev/null && echo alive || echo gone', "sh",
                     tunnel.pid]).stdout.strip()  # fmt: skip
    for _ in range(50):
        if gone == "gone":
            break
        time.sleep(0.1)
        gone = conn.run(["sh", "-c", 'kill -0 "$1" 2>/dev/null && echo alive || echo gone',
                         "sh", tunnel.pid]).stdout.strip()  # fmt: skip
    assert gone == "gone"
    conn.drop()


def _cut_when(conn: Connection, watcher: Connection, path: str, seen: str) -> threading.Thread:
    """A thread that kills ``conn``'s master connection once ``seen`` shows in the listing
    of ``path`` there (read through another connection)."""

    def run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listing = watcher.run(["sh", "-c", 'ls -aR "$1" 2>/dev/null || true', "sh", path])
            if seen in listing.stdout:
                out = subprocess.run(
                    ["ssh", *conn.options(), "-O", "check", conn.host.ssh],
                    capture_output=True,
                    text=True,
                )
                found = re.search(r"pid=(\d+)", out.stderr)
                if found:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(found[1]), 9)
                    cuts.append(seen)
                return
            time.sleep(0.02)

    cuts: list[str] = []
    thread = threading.Thread(target=run)
    thread.cuts = cuts  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_a_link_cut_while_staging_monitoring_and_fetching(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master connection is killed while an input is being staged, while the run is
    followed, and while it is fetched: each operation is tried again and completes, and the
    registry stays right."""
    from shoal.remote import hosts, registry
    from shoal.remote.submit import submit

    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, "shell", remote_shoal)
    script = _project(tmp_path)
    big = script.parent / "inputs" / "big.bin"
    big.write_bytes(os.urandom(120 * 1024 * 1024))
    h = hosts.find(name)
    conn = Connection(h)
    watcher = Connection(h.but(name=name + "-w"))
    base = conn.private_folder(h.workdir)
    cut = _cut_when(conn, watcher, base, ".big.bin.")  # rsync's temporary file: staging
    run = submit(h, script, include=["inputs/*"], conn=conn)
    cut.join()
    assert cut.cuts, "the staging ended before the link could be cut"  # type: ignore[attr-defined]
    assert registry.get(run.name).job == run.job and run.state == "pending"
    conn.run(["true"])
    subprocess.run(["ssh", *conn.options(), "-O", "exit", h.ssh], capture_output=True)
    assert _until_ended(cli, run.name)["state"] == "done"  # followed over a new master
    back = tmp_path / "back"
    fetched_cut: list[bool] = []

    def cut_fetch() -> None:
        if _wait_local(back, ".big.bin."):  # rsync's temporary file here: fetching
            _kill_master(conn)
            fetched_cut.append(True)

    fetch_cut = threading.Thread(target=cut_fetch)
    fetch_cut.start()
    conn.get(f"{run.folder}/", back)
    fetch_cut.join()
    assert fetched_cut, "the fetch ended before the link could be cut"
    fetched = hashlib.sha256((back / "inputs" / "big.bin").read_bytes()).digest()
    assert fetched == hashlib.sha256(big.read_bytes()).digest()
    watcher.drop()
    conn.drop()


def _wait_local(folder: Path, seen: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.exists() and any(seen in p.name for p in folder.rglob("*")):
            return True
        time.sleep(0.005)
    return False


def _kill_master(conn: Connection) -> None:
    out = subprocess.run(
        ["ssh", *conn.options(), "-O", "check", conn.host.ssh], capture_output=True, text=True
    )
    found = re.search(r"pid=(\d+)", out.stderr)
    if found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(found[1]), 9)


def test_a_host_with_another_shoal_is_refused_before_anything_is_staged(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    fake = (
        "mkdir -p ~/oldshoal && printf '#!/bin/sh\\necho shoal, version 0.0.1\\n' > "
        "~/oldshoal/shoal && chmod +x ~/oldshoal/shoal && export PATH=~/oldshoal:$PATH"
    )
    name = _add(cli, host, "shell", fake)
    sent = cli.invoke(main, ["remote", "submit", str(_project(tmp_path)), "--to", name])
    assert sent.exit_code == 2 and "shoal 0.0.1" in sent.output and "same version" in sent.output
    listed = json.loads(cli.invoke(main, ["remote", "list", "--json"]).output)
    assert listed == []  # nothing was recorded or staged


def test_an_expired_allocation_says_so_and_the_run_resumes_in_a_new_job(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grid Engine jobs of 10 s (h_rt). One whose task outlives it is killed by Grid Engine:
    ``remote list`` says the time limit ended it and how to go on. One whose driver stops
    starting tasks 3 s before the end (``--time-left 0.05``) says that it stopped, and
    ``remote resume`` submits it again, job after job, until the run is done; the registry
    follows."""
    if shutil.which("qsub") is None:
        pytest.skip("no Grid Engine on this machine (tests/infra)")
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    cli = CliRunner()
    name = _add(cli, host, "sge", remote_shoal)

    # 3 s before the end: the job script's clock starts after Grid Engine's (h_rt), and a
    # loaded machine takes a moment to stop the running tasks and record it; with no margin
    # Grid Engine may kill the job first, which is the other case, above
    def send(number: int, seconds: float, left: str = "0.05") -> str:
        script = tmp_path / "long.py"
        text = textwrap.dedent(LONG).replace("NUMBER", str(number))
        script.write_text(text.replace("SECONDS", str(seconds)))
        args = ["remote", "submit", str(script), "--to", name, "--time", "0:00:10"]
        sent = cli.invoke(main, [*args, "--time-left", left])
        assert sent.exit_code == 0, sent.output
        return sent.output.split()[2].rstrip(":")

    # A driver that believes the allocation ends a minute later than it does (as when a
    # site kills early) is still running its task when Grid Engine kills the job.
    killed = _until_ended(cli, send(1, 60.0, left="-1"))
    assert killed["state"] == "timeout", killed
    assert "time limit ended job" in str(killed["note"]), killed
    assert f"shoal remote resume {killed['name']}" in str(killed["note"]), killed

    run = send(24, 1.0)
    mine = _until_ended(cli, run)
    resumes = 0
    while mine["state"] == "stopped" and resumes < 8:  # a job does ~5 s of the 12 s of work
        assert f"shoal remote resume {run}" in str(mine["note"]), mine
        busy = cli.invoke(main, ["remote", "resume", run])
        assert busy.exit_code == 0 and "resumes it" in busy.output, busy.output
        resumes += 1
        again = cli.invoke(main, ["remote", "resume", run])  # its job may still be queued
        assert again.exit_code == 2 and "resumes the run itself" in again.output, again.output
        mine = _until_ended(cli, run)
    assert resumes >= 1 and mine["state"] == "done", mine
    status = cli.invoke(main, ["remote", "status", run])
    assert "succeeded 24" in status.output, status.output
    Connection(host.but(name=name)).drop()


def test_a_full_remote_disk_is_said_and_the_run_recorded_as_failed(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's work folder on a file system of 256 KiB (a tmpfs of the cluster's user)
    and an input of 1 MiB: staging fails, the message says the disk there is full and what
    to do, and the registry records the run as failed with that reason."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system for the cluster's user needs root")
    small = Path(f"/tmp/shoal-full-{os.getpid()}")
    small.mkdir(exist_ok=True)
    user = host.ssh.split("@")[0]
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=256k,mode=0700,uid={user},gid={user}", "tmpfs",
         str(small)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
        cli = CliRunner()
        name = _add(cli, host.but(workdir=str(small)), "shell", remote_shoal)
        script = _project(tmp_path)
        (script.parent / "inputs" / "big.dat").write_bytes(os.urandom(1 << 20))
        args = ["remote", "submit", str(script), "--to", name, "--include", "inputs/*"]
        sent = cli.invoke(main, args)
        assert sent.exit_code == 2, sent.output
        assert "The disk (or quota) there is full" in sent.output, sent.output
        assert "free space, or use another folder" in sent.output
        assert len(sent.output.splitlines()) < 25  # one screen
        (listed,) = json.loads(cli.invoke(main, ["remote", "list", "--json"]).output)
        assert listed["state"] == "failed" and listed["job"] is None
        assert "is full" in listed["note"]
        Connection(host.but(name=name)).drop()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
        small.rmdir()


def test_a_run_on_a_project_host_is_followed_from_any_folder(
    host: Host, remote_shoal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host recorded in the project's ``shoal-hosts.yaml``: the run sent from the project
    folder is listed, looked at and fetched from another folder, where that file is not (the
    registry keeps the host's record of the submission)."""
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "cfg"))
    script = _project(tmp_path)
    monkeypatch.chdir(script.parent)
    cli = CliRunner()
    name = f"{host.name[:40]}-proj"
    args = ["host", "add", name, "--ssh", host.ssh, "--port", str(host.port), "--project"]
    args += ["-i", str(host.identity), "--known-hosts", str(host.known_hosts)]
    args += ["--workdir", f"{host.workdir}/proj", "--pre-run", remote_shoal]
    added = cli.invoke(main, args)
    assert added.exit_code == 0 and "shoal-hosts.yaml" in added.output, added.output
    assert "(project)" in cli.invoke(main, ["host", "list"]).output
    sent = cli.invoke(main, ["remote", "submit", "flow.py", "--to", name, "--include", "inputs/*"])
    assert sent.exit_code == 0, sent.output
    run = sent.output.split()[2].rstrip(":")
    monkeypatch.chdir(tmp_path)  # no shoal-hosts.yaml here
    assert name not in cli.invoke(main, ["host", "list"]).output
    assert _until_ended(cli, run)["state"] == "done"
    status = cli.invoke(main, ["remote", "status", run])
    assert status.exit_code == 0 and "succeeded 11" in status.output, status.output
    fetched = cli.invoke(main, ["remote", "fetch", run, "--to", str(tmp_path / "back")])
    assert fetched.exit_code == 0, fetched.output
    Connection(host.but(name=name)).drop()
