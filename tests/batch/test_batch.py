"""Batch systems: the scripts each writes, the commands it runs, and its parsers on recorded
output (tests/batch/recorded/README.md says where each file comes from); then the real ones
this machine has: the shell always, Slurm when tests/infra started it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from shoal.batch import JobState, Output, Request, clock, local, seconds, system
from shoal.errors import BatchError, DefinitionError

RECORDED = Path(__file__).parent / "recorded"


def _out(name: str, code: int = 0) -> Output:
    return Output(code, (RECORDED / name).read_text())


def test_time_limits_read_and_written() -> None:
    assert seconds("30") == 1800 and seconds("2:00:00") == 7200 and seconds("10:30") == 630
    assert seconds("1-12:00:00") == 129600 and seconds("2-3") == 2 * 86400 + 3 * 3600
    assert clock(129600) == "36:00:00" and clock(59) == "00:00:59"
    with pytest.raises(DefinitionError, match="2:00:00"):
        seconds("two hours")


def test_a_request_refuses_names_and_options_that_would_break_the_script() -> None:
    with pytest.raises(DefinitionError, match="batch job name"):
        Request("sweep; rm -rf ~")
    with pytest.raises(DefinitionError, match="newline"):
        Request("sweep", options=("--mem=4G\nrm -rf ~",))
    with pytest.raises(DefinitionError, match="one node"):
        Request("sweep", nodes=0)


def test_each_batch_system_writes_its_directives_and_quotes_the_command() -> None:
    req = Request(
        "sweep",
        nodes=2,
        time_limit=7200,
        cores_per_node=16,
        account="m1234",
        queue="debug",
        output="/scratch/me/out.txt",
        workdir="/scratch/me/a dir; rm -rf ~",
        after="41",
        environment=("module load python",),
    )
    command = ["python", "-m", "shoal.cli.main", "run", "it's.yaml"]
    slurm = system("slurm").script(req, command)
    assert "#SBATCH --nodes=2\n#SBATCH --time=02:00:00" in slurm
    assert "#SBATCH --partition=debug" in slurm and "#SBATCH --account=m1234" in slurm
    assert "#SBATCH --dependency=afterany:41" in slurm
    assert "cd '/scratch/me/a dir; rm -rf ~'" in slurm
    assert "exec python -m shoal.cli.main run 'it'\"'\"'s.yaml'" in slurm
    assert "module load python\n" in slurm and "SHOAL_END_TIME=$(( $(date +%s) + 7200 ))" in slurm
    pbs = system("pbs").script(req, command)
    assert "#PBS -l select=2:ncpus=16:mpiprocs=16" in pbs and "#PBS -l walltime=02:00:00" in pbs
    assert "#PBS -W depend=afterany:41" in pbs and "#PBS -q debug" in pbs
    assert "#PBS -l nodes=2:ppn=16" in system("torque").script(req, command)
    with pytest.raises(DefinitionError, match="parallel environment"):
        system("sge").script(req, command)
    sge = system("sge").script(
        Request("sweep", nodes=2, time_limit=60, after="41", options=("-pe mpi 32",)), command
    )
    assert "#$ -l h_rt=00:01:00" in sge and "#$ -hold_jid 41" in sge and "#$ -pe mpi 32" in sge
    with pytest.raises(DefinitionError, match="no batch system 'lsf'"):
        system("lsf")


def test_submissions_give_the_job_id_or_say_why_not() -> None:
    slurm, sge, pbs = system("slurm"), system("sge"), system("pbs")
    assert slurm.submitted(Output(0, "1234\n")) == "1234"
    assert slurm.submitted(Output(0, "1234;perlmutter\n")) == "1234"
    assert sge.submitted(Output(0, "87\n")) == "87"
    assert sge.submitted(Output(0, "88.1-10:1\n")) == "88"
    assert pbs.submitted(Output(0, "1234.pbs01\n")) == "1234.pbs01"
    refused = Output(
        1,
        "",
        "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission "
        "failed: Job violates accounting/QOS policy (job submit limit, user's size and/or "
        "time limits)",
    )
    with pytest.raises(BatchError, match=r"sbatch refused the job: .*QOSMaxSubmitJobPerUser"):
        slurm.submitted(refused)
    assert slurm.limit_hit(refused)
    wrong = Output(  # recorded
        1,
        "",
        "sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job "
        "submission failed: Invalid partition name specified",
    )
    assert not slurm.limit_hit(wrong)
    assert sge.limit_hit(Output(1, "", "job rejected: Only 100 jobs are allowed per user"))
    assert pbs.limit_hit(Output(38, "", "qsub: would exceed queue generic's per-user limit"))


def test_pbs_pro_json_status() -> None:
    ids = ["1234.pbs01", "1235", "1236.pbs01", "1237.pbs01", "1238.pbs01", "1239.pbs01", "9"]
    jobs = system("pbs").parse_status([_out("pbs_pro_qstat_f_F_json_x.json")], ids)
    assert jobs["1234.pbs01"].state is JobState.DONE and jobs["1234.pbs01"].exit_code == 0
    assert jobs["1235"].state is JobState.RUNNING  # asked without the server's name
    assert jobs["1236.pbs01"].state is JobState.PENDING
    assert "Insufficient amount of resource" in jobs["1236.pbs01"].reason
    assert jobs["1237.pbs01"].state is JobState.TIMEOUT  # Exit_status -29: walltime
    assert jobs["1238.pbs01"].state is JobState.CANCELLED  # 271: killed by qdel's SIGTERM
    assert jobs["1239.pbs01"].state is JobState.PENDING  # held
    assert jobs["9"].state is JobState.UNKNOWN
    with pytest.raises(BatchError, match="not JSON"):
        system("pbs").parse_status([Output(0, "{broken")], ["1"])


def test_torque_text_status() -> None:
    ids = ["77.torque01.example.org", "78", "79"]
    jobs = system("torque").parse_status([_out("torque_qstat_f.txt")], ids)
    assert jobs["77.torque01.example.org"].state is JobState.DONE
    assert jobs["78"].state is JobState.RUNNING
    assert jobs["79"].state is JobState.TIMEOUT  # exit_status -11: walltime
    assert system("torque").status(["78"]) == [["qstat", "-f", "78"]]


def test_slurm_status_recorded_along_a_chain() -> None:
    """Real squeue output (-t all) while job 57 waited for 55 (afterany), 56 failed with
    exit code 4 and 58 was cancelled; then sacct's format for jobs squeue forgot."""
    slurm = system("slurm")
    ids = ["55", "56", "57", "58"]
    first = slurm.parse_status([_out("slurm_squeue1.txt")], ids)
    assert first["57"].state is JobState.PENDING and first["57"].reason == "Dependency"
    assert all(first[i].state is JobState.RUNNING for i in ("55", "56", "58"))
    second = slurm.parse_status([_out("slurm_squeue2.txt")], ids)
    assert second["58"].state is JobState.CANCELLED and second["55"].state is JobState.DONE
    assert second["56"].state is JobState.FAILED and second["56"].reason == "NonZeroExitCode"
    assert second["57"].state is JobState.RUNNING
    last = slurm.parse_status([_out("slurm_squeue3.txt")], ids)
    assert [last[i].state for i in ids] == [
        JobState.DONE,
        JobState.FAILED,
        JobState.DONE,
        JobState.CANCELLED,
    ]
    forgotten = Output(1, "", "slurm_load_jobs error: Invalid job id specified")
    sacct = Output(0, "7|COMPLETED|0:0|None\n8|CANCELLED by 0|0:15|None\n9|TIMEOUT|0:0|None\n")
    old = slurm.parse_status([forgotten, sacct], ["7", "8", "9", "10"])
    assert old["7"].state is JobState.DONE and old["7"].exit_code == 0
    assert old["8"].state is JobState.CANCELLED and old["9"].state is JobState.TIMEOUT
    assert old["10"].state is JobState.UNKNOWN


def test_grid_engine_status_recorded_from_qstat_then_qacct() -> None:
    """Real qstat while job 1 ran, 4 was being sent (t) and 3 waited for 1 (hqw, -hold_jid);
    then qacct -j of a job that ended well, one that exited 4, one deleted while it ran
    (qdel) and one killed at its time limit (h_rt)."""
    sge = system("sge")
    now = sge.parse_status([_out("sge_qstat1.txt")], ["1", "3", "4", "2"])
    assert now["1"].state is JobState.RUNNING and now["4"].state is JobState.RUNNING
    assert now["3"].state is JobState.PENDING and now["2"].state is JobState.UNKNOWN
    ending = Output(0, "     58 0.50000 job.sh root dr 12/03/2026 18:58:00 all.q@localhost 2\n")
    assert sge.parse_status([ending], ["58"])["58"].state is JobState.RUNNING  # not ended yet
    held = sge.parse_status([_out("sge_qstat3.txt")], ["7"])
    assert held["7"].state is JobState.PENDING and "hqw" in held["7"].reason
    cases = {
        "sge_qacct_done.txt": ("1", JobState.DONE, 0),
        "sge_qacct_exit4.txt": ("2", JobState.FAILED, 4),
        "sge_qacct_qdel.txt": ("4", JobState.CANCELLED, 137),
        "sge_qacct_h_rt.txt": ("6", JobState.TIMEOUT, 137),
    }
    for name, (jid, state, code) in cases.items():
        job = sge.parse_status([Output(0, ""), _out(name)], [jid])[jid]
        assert (job.state, job.exit_code) == (state, code), name
    gone = sge.parse_status([Output(0, ""), Output(1, "", "error: job id 7 not found")], ["7"])
    assert gone["7"].state is JobState.UNKNOWN
    refused = Output(
        1,
        "",
        'Unable to run job: Job was rejected because job requests unknown queue "nope"\nExiting.',
    )
    with pytest.raises(BatchError, match="unknown queue"):
        sge.submitted(refused)
    assert not sge.limit_hit(refused)


def test_the_shell_runs_a_job_in_the_background_and_keeps_its_exit_code(
    tmp_path: Path,
) -> None:
    """No batch system: the script runs detached; its state and exit code are read back."""
    shell = system("shell", jobs=str(tmp_path / "jobs"))
    script = tmp_path / "job.sh"
    script.write_text(
        shell.script(Request("quick", workdir=str(tmp_path)), ["bash", "-c", "echo hi; exit 3"])
    )
    first = shell.submitted(local(shell.submit(str(script))))
    slow = tmp_path / "slow.sh"
    slow.write_text(shell.script(Request("slow", workdir=str(tmp_path)), ["sleep", "60"]))
    second = shell.submitted(local(shell.submit(str(slow))))
    deadline = time.monotonic() + 60
    while shell.ask(local, [first])[first].state is not JobState.FAILED:
        assert time.monotonic() < deadline, "the quick job did not end"
        time.sleep(0.05)
    assert shell.ask(local, [first])[first].exit_code == 3
    assert (tmp_path / "job.sh.out").read_text() == "hi\n"
    assert shell.ask(local, [second])[second].state is JobState.RUNNING
    assert local(shell.cancel([second])).code == 0
    while shell.ask(local, [second])[second].state is JobState.RUNNING:
        assert time.monotonic() < deadline, "the cancelled job still runs"
        time.sleep(0.05)


@pytest.mark.usefixtures("slurm")
def test_a_real_slurm_job_is_submitted_followed_and_its_chain_waits(tmp_path: Path) -> None:
    slurm = system("slurm")
    first = tmp_path / "first.sh"
    req = Request("shoal-test", time_limit=120, workdir=str(tmp_path), output=str(tmp_path / "o1"))
    first.write_text(slurm.script(req, ["bash", "-c", "sleep 1; exit 0"]))
    a = slurm.submitted(local(slurm.submit(str(first))))
    second = tmp_path / "second.sh"
    req2 = Request(
        "shoal-test-2", time_limit=120, workdir=str(tmp_path), output=str(tmp_path / "o2"), after=a
    )
    second.write_text(slurm.script(req2, ["bash", "-c", "exit 4"]))
    b = slurm.submitted(local(slurm.submit(str(second))))
    seen = set()
    deadline = time.monotonic() + 120
    while True:
        jobs = slurm.ask(local, [a, b])
        seen.add((jobs[a].state, jobs[b].state))
        if jobs[b].state.ended or (jobs[b].state is JobState.UNKNOWN and jobs[a].state.ended):
            break
        assert time.monotonic() < deadline, f"the chain did not end: {jobs}"
        time.sleep(0.2)
    assert (JobState.RUNNING, JobState.PENDING) in seen or (
        JobState.PENDING,
        JobState.PENDING,
    ) in seen
    assert jobs[b].state in (JobState.FAILED, JobState.UNKNOWN)  # no accounting: gone


@pytest.mark.skipif(shutil.which("qsub") is None, reason="no Grid Engine here (tests/infra)")
def test_a_real_grid_engine_job_is_followed_to_its_end(tmp_path: Path) -> None:
    sge = system("sge")
    if local(["qstat"]).code != 0:
        pytest.skip("Grid Engine's qmaster does not answer (tests/infra/sge-local.sh up)")
    first = tmp_path / "first.sh"
    out = str(tmp_path / "o1")
    first.write_text(
        sge.script(
            Request("shoal-a", time_limit=120, workdir=str(tmp_path), output=out),
            ["bash", "-c", "echo ran; exit 0"],
        )
    )
    a = sge.submitted(local(sge.submit(str(first))))
    second = tmp_path / "second.sh"
    req2 = Request("shoal-b", time_limit=120, workdir=str(tmp_path), output=out + "2", after=a)
    second.write_text(sge.script(req2, ["bash", "-c", "exit 4"]))
    b = sge.submitted(local(sge.submit(str(second))))
    deadline = time.monotonic() + 120
    # Until both ended as qacct tells it: a job qstat no longer lists reads "unknown" until
    # the accounting file has its record (a second or more under load)
    while True:
        jobs = sge.ask(local, [a, b])
        if all(j.state.ended for j in jobs.values()):
            break
        assert time.monotonic() < deadline, f"the jobs did not end: {jobs}"
        time.sleep(0.3)
    assert jobs[a].state is JobState.DONE and jobs[a].exit_code == 0
    assert jobs[b].state is JobState.FAILED and jobs[b].exit_code == 4
    assert Path(out).read_text() == "ran\n"


def test_the_nodes_of_a_grid_engine_or_pbs_allocation(tmp_path: Path) -> None:
    """Grid Engine's PE_HOSTFILE (recorded from a job of -pe mpi 2 here) and PBS's
    PBS_NODEFILE (a host once per slot)."""
    from shoal.batch.nodes import allocated, pbs_nodefile, pe_hostfile

    assert pe_hostfile((RECORDED / "sge_pe_hostfile.txt").read_text()) == [("localhost", 2)]
    two = pe_hostfile("n1 16 all.q@n1 UNDEFINED\nn2 8 all.q@n2 UNDEFINED\nn1 4 big.q@n1 0\n")
    assert two == [("n1", 20), ("n2", 8)]
    assert pbs_nodefile((RECORDED / "pbs_nodefile.txt").read_text()) == [
        ("n001.cluster", 4),
        ("n002.cluster", 4),
    ]
    with pytest.raises(BatchError, match="line 1"):
        pe_hostfile("garbage\n")
    hostfile = tmp_path / "pe"
    hostfile.write_text("localhost 2 all.q@localhost UNDEFINED\n")
    assert allocated({"PE_HOSTFILE": str(hostfile)}) == [("localhost", 2)]
    assert allocated({}) is None
    with pytest.raises(BatchError, match="cannot be read"):
        allocated({"PBS_NODEFILE": str(tmp_path / "missing")})


def test_a_local_run_in_a_grid_engine_allocation_uses_its_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a job of one slot on a shared node, shoal uses one core, not the node's all."""
    import os
    import socket

    from shoal.backends.local import LocalBackend

    hostfile = tmp_path / "pe_hostfile"
    hostfile.write_text(f"{socket.gethostname()} 1 all.q@{socket.gethostname()} UNDEFINED\n")
    monkeypatch.setenv("PE_HOSTFILE", str(hostfile))
    b = LocalBackend()
    assert len(b.node.cores) == 1
    assert any("gives this host 1 slot" in n for n in b.notes())
    assert len(LocalBackend(cpus=2).node.cores) == 2  # what the user asks wins
    hostfile.write_text(f"{socket.gethostname()} 2 q UNDEFINED\nother 8 q UNDEFINED\n")
    two = LocalBackend()
    assert len(two.node.cores) == min(2, len(os.sched_getaffinity(0)))
    assert any("1 other host(s) are left unused" in n for n in two.notes())
