"""The Slurm backend: its pure build-and-parse code on recorded output, and the conformance
suite against a real Slurm (skipped, with the reason, where Slurm is not running)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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

from .conformance import BackendContract
from .slurm_fixtures import allocation, slurm  # noqa: F401 - fixtures

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


def test_step_of_a_gpu_task_names_the_placement_gpus() -> None:
    p = Placement((Slot(0, (0,), (2, 3), 0, 1),))
    argv = step_argv(job(p), ["n1"], ["train"], bind=False)
    assert "--gres=none" not in argv and not any(a.startswith("--cpu-bind") for a in argv)
    i = argv.index("env")
    assert argv[i + 1 : i + 4] == [
        "CUDA_VISIBLE_DEVICES=2,3",
        "ROCR_VISIBLE_DEVICES=2,3",
        "ZE_AFFINITY_MASK=2,3",
    ]
    assert argv[-1] == "train"


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
    @pytest.fixture
    def backend(self, rundir: Path, allocation: str) -> Iterator[SlurmBackend]:  # noqa: F811
        b = SlurmBackend(job=allocation)
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()

    def test_the_allocation_is_read_from_slurm(self, backend: SlurmBackend) -> None:
        (node,) = backend.nodes()
        assert len(node.cores) == 16 and node.gpus == (0, 1, 2, 3)
