"""The seed examples of Ensemble Launcher and ensemble-python, read (and run) unchanged.

The files live in ``../shared/seed_examples/`` beside the checkout (or where
``SHOAL_SEEDS`` points); the tests skip, saying so, when the folder is absent. Commands that
do not exist here (``./exe``, ``py_echo.py``, ...) are replaced by stand-in scripts written by
the fixtures; ``sleep`` is replaced by a stand-in that sleeps 0.1 s, so that the
ensemble-python examples take seconds rather than minutes.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

import shoal
from shoal.config import Ensemble, load
from shoal.config.build import workflow
from shoal.errors import DefinitionError

from .helpers import ran

ROOT = Path(__file__).resolve().parents[2]
SEEDS = Path(os.environ.get("SHOAL_SEEDS", ROOT.parent / "shared" / "seed_examples"))
EL = SEEDS / "ensemble_launcher"
EP = SEEDS / "ensemble_python"

pytestmark = pytest.mark.skipif(
    not SEEDS.is_dir(), reason=f"the seed examples are not at {SEEDS} (set SHOAL_SEEDS)"
)


def seed(folder: Path, name: str, into: Path) -> Path:
    """A copy of a seed file in ``into`` (runs write their directories beside the file)."""
    src = folder / name
    if not src.exists():
        pytest.skip(f"{src} is missing")
    return Path(shutil.copy(src, into / name))


def stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def commands(ens: shoal.config.Ensemble, group: str) -> list[str]:  # type: ignore[name-defined]
    g = ens.groups[group]
    return [g.command_line(row, i) for i, row in enumerate(g.rows())]


def run(ens: Ensemble, folder: Path) -> shoal.Run:
    return shoal.run(workflow(ens), base=folder, **ens.run_options())


# -- Ensemble Launcher ------------------------------------------------------------------------
def test_el_tests_ensembles_runs_with_a_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = seed(EL, "tests_ensembles.json", tmp_path)
    (tmp_path / "py_echo.py").write_text("import sys\nprint('echo', sys.argv[1])\n")
    monkeypatch.chdir(tmp_path)
    ens = load(path)
    assert ens.format == "ensemble-launcher" and ens.size == 12
    assert commands(ens, "ensemble_1") == [f"python3 py_echo.py {i}" for i in range(12)]
    assert ens.groups["ensemble_1"].task_options({}, 0).request.describe() == "1 core"
    wf = workflow(ens)
    r = shoal.run(wf, base=tmp_path, **ens.run_options())
    assert r.ok
    assert [r.result(t)["stdout"].strip() for t in wf.tasks] == [f"echo {i}" for i in range(12)]


def test_el_linspace_one_to_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = seed(EL, "readme_quickstart_linspace_one_to_one.json", tmp_path)
    stand_in(tmp_path, "exe", 'echo "$@"')
    monkeypatch.chdir(tmp_path)
    ens = load(path)
    expected = [
        f"./exe -a {a} -b {b}"
        for a, b in zip([0.0, 2.5, 5.0, 7.5, 10.0], [0.0, 0.25, 0.5, 0.75, 1.0], strict=True)
    ]
    assert commands(ens, "example_ensemble") == expected
    wf = workflow(ens)
    r = shoal.run(wf, base=tmp_path, **ens.run_options())
    assert r.ok
    assert [r.result(t)["stdout"].strip() for t in wf.tasks] == [e[6:] for e in expected]


def test_el_file_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = seed(EL, "readme_shell_ensemble_filelist.json", tmp_path)
    stand_in(tmp_path, "simulation", 'echo "$2"')
    monkeypatch.chdir(tmp_path)
    ens = load(path)
    assert commands(ens, "shell_ensemble") == [
        f"./simulation --config config{i}.json" for i in (1, 2, 3)
    ]
    r = run(ens, tmp_path)
    assert r.ok and len(ran(r)) == 3


def test_el_pinned_ensemble_keeps_the_counts(tmp_path: Path) -> None:
    path = seed(EL, "readme_pinned_ensemble.json", tmp_path)
    with pytest.raises(
        DefinitionError,
        match=r"readme_pinned_ensemble.json:\d+: "
        r"ensembles.pinned_ensemble.ngpus_per_process: .*4 ranks × \(1 core \+ 1 GPU\)",
    ):
        load(path, ["resources.gpus=0"])
    ens = load(path, ["resources.cpus=4", "resources.gpus=4"])
    assert ens.size == 1
    opts = ens.groups["pinned_ensemble"].task_options({}, 0)
    assert (opts.ranks, opts.cpus, opts.gpus) == (4, 1, 1)
    assert any("cpu_affinity" in n and "chooses core and GPU ids" in n for n in ens.notes)


def test_el_serial_cpu_and_gpu_ensembles_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = seed(EL, "workflow_pattern1_serial_cpu_gpu.json", tmp_path)
    stand_in(tmp_path, "serial_example", "exit 0")
    monkeypatch.chdir(tmp_path)
    ens = load(path, ["resources.gpus=2"])
    assert {n: g.size for n, g in ens.groups.items()} == {
        "cpu_ensemble": 1024,
        "gpu_ensemble": 1024,
    }
    assert ens.groups["cpu_ensemble"].request({}, 0) == "1 core"
    assert ens.groups["gpu_ensemble"].request({}, 0) == "1 core + 1 GPU"
    assert set(commands(ens, "gpu_ensemble")) == {"./serial_example 1 true"}
    r = run(ens, tmp_path)
    assert r.ok and len(ran(r)) == 2048


def test_el_mpi_ensembles_map_to_ranks_across_nodes(tmp_path: Path) -> None:
    path = seed(EL, "workflow_pattern2_mpi_cpu_gpu.json", tmp_path)
    with pytest.raises(DefinitionError, match=r"nnodes: group 'cpu_ensemble' asks for 2 nodes"):
        load(path)
    ens = load(path, ["resources.nodes=2", "resources.cpus=24", "resources.gpus=12"])
    cpu, gpu = ens.groups["cpu_ensemble"], ens.groups["gpu_ensemble"]
    assert (cpu.size, gpu.size, cpu.nodes) == (10, 10, 2)
    assert cpu.request({}, 0) == "48 ranks × (1 core)"
    assert gpu.request({}, 0) == "24 ranks × (1 core + 1 GPU)"
    with pytest.raises(DefinitionError, match="the local backend runs on this one machine"):
        ens.run_options()


def test_el_ppn_sweep_varies_the_ranks(tmp_path: Path) -> None:
    path = seed(EL, "workflow_pattern3_ppn_sweep.json", tmp_path)
    ens = load(path, ["resources.nodes=2", "resources.cpus=24", "resources.gpus=12"])
    g = ens.groups["gpu_ensemble"]
    assert g.size == 10 and set(commands(ens, "gpu_ensemble")) == {"./mpi_example 1 true"}
    shapes = [g.task_options(row, i) for i, row in enumerate(g.rows())]
    assert [o.ranks for o in shapes] == [2 * p for p in range(1, 11)]
    assert {o.gpus for o in shapes} == {1}


@pytest.mark.parametrize(
    "name", ["readme_system.json", "readme_launcher.json", "readme_launcher_cluster.json"]
)
def test_el_system_and_launcher_files_are_recognised(tmp_path: Path, name: str) -> None:
    path = seed(EL, name, tmp_path)
    with pytest.raises(DefinitionError, match=r"Ensemble Launcher .* not an ensemble"):
        load(path)


# -- ensemble-python --------------------------------------------------------------------------
@pytest.fixture
def quick_sleep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sleep`` on PATH that sleeps 0.1 s whatever it is asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(bin_dir, "sleep", "exec /bin/sleep 0.1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def by_group(r: shoal.Run) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for t in ran(r):
        out.setdefault(str(t["group"]), []).append(t)
    return out


def test_ep_hello_world(quick_sleep: Path) -> None:
    path = seed(EP, "hello-world.yaml", quick_sleep)
    ens = load(path)
    assert ens.format == "ensemble-python"
    assert {n: (g.size, g.start) for n, g in ens.groups.items()} == {
        "echo": (5, False),
        "sleep": (5, False),
    }
    assert commands(ens, "sleep") == ["sleep 10"] * 5
    kinds = [(a.trigger, a.kind, a.target) for a in ens.rules]
    assert kinds == [("start", "submit", "sleep"), ("metric", "submit", "echo")]
    r = run(ens, quick_sleep)
    assert r.ok
    g = by_group(r)
    assert len(g["sleep"]) == 5 and len(g["echo"]) == 5
    third = sorted(float(t["ended"]) for t in g["sleep"])[2]  # type: ignore[arg-type]
    assert min(float(t["started"]) for t in g["echo"]) >= third  # type: ignore[arg-type]


def test_ep_backoff_and_repetitions(quick_sleep: Path) -> None:
    path = seed(EP, "backoff-example.yaml", quick_sleep)
    ens = load(path)
    assert [(a.times, a.skip) for a in ens.rules] == [(1, 0), (3, 0), (3, 2)]
    r = run(ens, quick_sleep)
    assert r.ok
    counts = {k: len(v) for k, v in by_group(r).items()}
    # 3 repetitions of a group of 2; 3 repetitions with two skipped triggers between them
    assert counts == {"sleep": 5, "echo-repetition": 6, "echo-backoff": 3}


def test_ep_terminate_stops_the_run(quick_sleep: Path) -> None:
    path = seed(EP, "terminate-example.yaml", quick_sleep)
    ens = load(path)
    assert ens.rules[-1].kind == "stop" and not ens.rules[-1].drain
    r = run(ens, quick_sleep)
    assert r.state == "stopped"
    g = by_group(r)
    assert [t["state"] for t in g["echo"]] == ["succeeded"] * 5


def test_ep_heartbeat_checks_metrics_and_leaves_an_unused_group_alone(quick_sleep: Path) -> None:
    path = seed(EP, "heartbeat-example.yaml", quick_sleep)
    ens = load(path)
    assert all(a.seconds == 3 for a in ens.rules if a.trigger == "metric")
    assert any("big-sleep" in n and "never submitted" in n for n in ens.notes)
    r = run(ens, quick_sleep)
    assert r.ok
    counts = {k: len(v) for k, v in by_group(r).items()}
    assert counts == {"sleep": 5, "echo": 10}  # two identical rules each submit echo once


def test_ep_grow_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = seed(EP, "grow-shrink-example.yaml", tmp_path)
    with pytest.raises(DefinitionError, match=r"jobs\[1\].nodes: group 'sleep' asks for 4 nodes"):
        load(path)
    ens = load(path, ["resources.nodes=4", "resources.cpus=4"])
    assert any("grow: the local backend cannot resize" in n for n in ens.notes)
    grow = ens.rules[-1]
    assert grow.kind == "grow" and grow.when is not None
    assert grow.when.describe() == "mean.sleep.pending > 5"
