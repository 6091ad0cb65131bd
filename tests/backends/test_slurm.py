"""The Slurm backend: its pure build-and-parse code on recorded output, and the conformance
suite against a real Slurm (skipped, with the reason, where Slurm is not running)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.backends.base import Job
from shoal.backends.slurm import (
    SlurmBackend,
    can_bind,
    cpu_bind,
    field,
    hostfile_text,
    ids,
    job_layout,
    step_argv,
    transient,
)
from shoal.core.resources import Placement, Slot

from .conformance import BackendContract, add

DATA = Path(__file__).parent / "data"


def test_id_lists() -> None:
    assert ids("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert ids("5") == (5,)
    assert ids("") == ()


def test_job_layout_from_recorded_scontrol_output() -> None:
    text = (DATA / "scontrol_show_job_d.txt").read_text()
    assert job_layout(text) == [("localhost", tuple(range(12)), (0, 1, 2))]
    assert field(text, "NumNodes") == "1" and field(text, "JobState") == "RUNNING"


def test_job_layout_of_several_node_lines() -> None:
    text = (
        "   JOB_GRES=gpu:a100:8\n"
        "     Nodes=nid[001-002] CPU_IDs=0-63 Mem=0 GRES=gpu:a100:4(IDX:0-3)\n"
        "     Nodes=nid003 CPU_IDs=0-31 Mem=0 GRES=\n"
    )
    assert job_layout(text) == [
        ("nid[001-002]", tuple(range(64)), (0, 1, 2, 3)),
        ("nid003", tuple(range(32)), ()),
    ]


def test_several_gpu_types_on_one_node() -> None:
    text = "     Nodes=n1 CPU_IDs=0-7 Mem=0 GRES=gpu:a100:2(IDX:0-1),gpu:v100:2(IDX:2-3)\n"
    assert job_layout(text) == [("n1", tuple(range(8)), (0, 1, 2, 3))]


def test_binding_support_from_the_config() -> None:
    assert not can_bind("TaskPlugin              = task/none\n")
    assert can_bind("TaskPlugin              = task/affinity,task/cgroup\n")


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (
            "srun: Job 12 step creation temporarily disabled, retrying (Requested nodes are busy)",
            True,
        ),
        ("srun: error: Unable to create step for job 12: Step limit reached for this job", True),
        ("srun: error: Unable to contact slurm controller (connect failure)", True),
        (
            "srun: error: Unable to create step for job 12: Requested node configuration is not "
            "available",
            False,
        ),
        ("Traceback (most recent call last):\nValueError: bad input", False),
        ("my_app: socket timed out talking to the license server", False),  # the task's own
    ],
)
def test_transient_step_failures(stderr: str, expected: bool) -> None:
    assert transient(stderr) is expected


def test_cpu_binding_follows_the_placement() -> None:
    assert cpu_bind((4, 5, 6), 3) == "--cpu-bind=map_cpu:4,5,6"
    assert cpu_bind((0, 1, 2, 3), 2) == "--cpu-bind=mask_cpu:0x3,0xc"


def job(placement: Placement, cpus: int = 1, argv: tuple[str, ...] = ("hostname",)) -> Job:
    return Job(7, 1, "t", "command", placement, "/tmp/t7", argv=list(argv), cpus=cpus)


def test_step_of_a_cpu_task() -> None:
    p = Placement((Slot(0, (2, 3), (), 0, 1),))
    argv = step_argv(job(p, cpus=2), ["n1"], ["./md", "-in", "x"], jobid="42")
    assert argv[:6] == [
        "srun",
        "--exact",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--nodelist=n1",
    ]
    assert "--jobid=42" in argv and "--cpu-bind=mask_cpu:0xc" in argv
    assert "--gres=none" in argv
    assert argv[-3:] == ["./md", "-in", "x"]


def test_step_of_a_gpu_task_asks_slurm_for_its_gpus() -> None:
    """A step without --gres takes every GPU of an allocation that has GPUs (steps then ran
    one after another): each asks for as many as its placement holds."""
    p = Placement((Slot(0, (0,), (2, 3), 0, 1),))
    argv = step_argv(job(p), ["n1"], ["train"], bind=False)
    assert "--gres=gpu:2" in argv and "--gres=none" not in argv
    assert not any(a.startswith("--cpu-bind") for a in argv)
    assert "env" not in argv  # Slurm sets CUDA_VISIBLE_DEVICES to the GPUs it gave
    assert argv[-1] == "train"


@pytest.mark.parametrize(
    ("code", "stderr", "kind", "exit_code"),
    [
        (139, "srun: error: localhost: task 0: Segmentation fault\n", "crash", -11),
        (137, "srun: error: localhost: task 0: Killed\n", "crash", -9),
        (137, "srun: error: localhost: task 0: Exited with exit code 137\n", "exit", 137),
        (3, "srun: error: localhost: task 0: Exited with exit code 3\n", "exit", 3),
    ],
)
def test_a_signal_is_a_crash_as_locally(code: int, stderr: str, kind: str, exit_code: int) -> None:
    """Recorded srun 22.05 output: a task killed by a signal is a crash, not exit 128+N."""
    from shoal.backends.slurm import signalled
    from shoal.core.events import Outcome

    o = Outcome(1, 1, False, 0.0, 1.0, "exit", f"command 'x': the process exited with code {code}")
    o.exit_code = code
    got = signalled(o, stderr)
    assert (got.kind, got.exit_code) == (kind, exit_code)
    if kind == "crash":
        assert "killed by SIG" in got.error and "exited with code" not in got.error


def test_step_across_nodes_places_ranks_by_hostfile() -> None:
    p = Placement((Slot(0, (0, 1, 2), (), 0, 3), Slot(1, (0,), (), 0, 1)))
    argv = step_argv(job(p), ["a", "b"], ["mpi_app"])
    assert "--nodes=2" in argv and "--ntasks=4" in argv and "--nodelist=a,b" in argv
    assert "--distribution=arbitrary" in argv
    assert hostfile_text(p, ["a", "b"]) == "a\na\na\nb\n"


def test_outside_an_allocation_the_backend_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shoal.errors import BackendError

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(BackendError, match="SLURM_JOB_ID is not set: start the driver with sbatch"):
        SlurmBackend()


class TestSlurmConformance(BackendContract):
    """Python tasks on the persistent workers (the default with dask.distributed)."""

    @pytest.fixture
    def backend(self, rundir: Path, allocation: str) -> Iterator[SlurmBackend]:
        b = SlurmBackend(job=allocation, python="workers", host="127.0.0.1")
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()

    def test_the_allocation_is_read_from_slurm(self, backend: SlurmBackend) -> None:
        (node,) = backend.nodes()
        assert len(node.cores) == 16 and node.gpus == (0, 1, 2, 3)


def _steps_job(backend: SlurmBackend, rundir: Path, task: int, argv: list[str]) -> Job:
    node = backend.nodes()[0]
    return Job(
        task,
        1,
        "t",
        "command",
        Placement((Slot(0, (node.cores[task],), (), 0, 1),)),
        str(rundir / "tasks" / str(task)),
        argv=argv,
    )


def test_max_concurrent_steps_caps_the_steps_running_at_once(
    tmp_path: Path,
    allocation: str,
) -> None:
    import pickle
    import time

    b = SlurmBackend(job=allocation, max_concurrent_steps=2)
    b.start(tmp_path)
    try:
        stamp = "python3 -c 'import time; print(time.time()); time.sleep(0.6); print(time.time())'"
        b.submit([_steps_job(b, tmp_path, i, ["/bin/sh", "-c", stamp]) for i in range(6)])
        out = []
        deadline = time.monotonic() + 60
        while len(out) < 6 and time.monotonic() < deadline:
            out += b.poll(1.0)
    finally:
        b.close()
    assert len(out) == 6 and all(o.ok for o in out), [o.error for o in out]
    spans = [tuple(map(float, pickle.loads(o.result)["stdout"].split())) for o in out]
    for t0, _ in spans:  # at any start, at most 2 steps (this one included) are running
        assert sum(1 for a, b2 in spans if a <= t0 < b2) <= 2


def test_a_step_refused_for_a_passing_reason_is_tried_again(
    tmp_path: Path,
    allocation: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pickle
    import shutil
    import time

    import shoal.backends.slurm.steps as slurm_module

    real = shutil.which("srun")
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    marker = tmp_path / "refused-once"
    fake.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {marker} ]; then touch {marker}; "
        "echo 'srun: Job 9 step creation temporarily disabled, retrying' >&2; exit 1; fi\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm_module, "BACKOFF", (0.2,))
    b = SlurmBackend(job=allocation)
    b.start(tmp_path)
    try:
        b.submit([_steps_job(b, tmp_path, 0, ["echo", "through"])])
        out = []
        deadline = time.monotonic() + 30
        while not out and time.monotonic() < deadline:
            out = b.poll(1.0)
    finally:
        b.close()
    (o,) = out
    assert o.ok, o.error
    assert pickle.loads(o.result or b"")["stdout"] == "through\n"
    assert not (tmp_path / "tasks" / "0" / "stderr").exists()  # the refusal is not kept


class TestSlurmStepsConformance(BackendContract):
    """The same contract with every Python task as its own job step."""

    @pytest.fixture
    def backend(self, rundir: Path, allocation: str) -> Iterator[SlurmBackend]:
        b = SlurmBackend(job=allocation, python="steps")
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()


def test_the_worker_pool_is_private_and_survives_losing_its_step(
    tmp_path: Path, allocation: str
) -> None:
    """The pool's scheduler and workers listen on loopback (a one-node allocation) and speak
    TLS with a key made for this run: a client without it cannot connect (they used to listen
    on every interface, without authentication: anyone could run code as the user). When the
    worker step is lost (scancel of the step), the backend starts it again and Python tasks
    run on (every later task used to fail at once, 'lost: Dask cancelled it'). The log is in
    the given folder, not in /tmp."""
    import glob
    import subprocess
    import time

    distributed = pytest.importorskip("distributed")
    from shoal.backends.slurm.dask_workers import in_allocation

    before = set(glob.glob("/tmp/shoal-dask-*"))
    b = in_allocation(allocation, overlap=True, folder=tmp_path / "dask")
    try:
        b.start(tmp_path)
        address = b.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:"), address
        assert all(a.startswith("tls://127.0.0.1:") for a in b.client.scheduler_info()["workers"])
        from distributed.security import Security

        strangers = [  # no TLS; TLS without a key; TLS with a key of one's own making
            (address.replace("tls://", "tcp://"), None),
            (address, None),
            (address, Security.temporary()),
        ]
        for where, security in strangers:
            with pytest.raises((OSError, TimeoutError, TypeError)):
                distributed.Client(where, security=security, timeout=3).close()
        o = BackendContract().run_one(b, BackendContract.python_job(b, tmp_path, 1, add, 1, 2))
        assert o.ok, o.error
        steps = subprocess.run(
            ["squeue", "-h", "-s", "-j", allocation, "-o", "%i %j"],
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        (step,) = [s.split()[0] for s in steps if "shoal-dask-" in s]
        (old,) = b.client.scheduler_info()["workers"]
        subprocess.run(["scancel", step], check=True, timeout=30)
        for _ in range(600):  # the scheduler has seen the worker go
            if old not in b.client.scheduler_info()["workers"]:
                break
            time.sleep(0.05)
        returned = 0
        for t in range(2, 5):
            job = BackendContract.python_job(b, tmp_path, t, add, t)
            for _ in range(20):  # as the core does: a job given back unstarted goes again
                b.submit([job])
                got: list[Any] = []
                deadline = time.monotonic() + 60
                while not got and time.monotonic() < deadline:
                    got = b.poll(0.2)
                assert got, (b.addr, b.missing, b.waiting, b.notes())
                (o,) = got
                if not o.returned:
                    break
                returned += 1
                job.attempt += 1
            assert o.ok, o.error
        assert returned <= 3, returned  # only those sent before the loss was seen
        assert any("started it again" in n for n in b.notes()), b.notes()
    finally:
        b.close()
    assert (tmp_path / "dask" / "dask.log").exists()
    assert set(glob.glob("/tmp/shoal-dask-*")) <= before
