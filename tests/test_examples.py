"""The examples run end to end (quick mode) and give physically sensible answers."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shoal.store.queries import Reader

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
README = EXAMPLES.parent / "README.md"


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples folder is not a package)."""
    modname = f"shoal_example_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


# -- eos.py ------------------------------------------------------------------------------------
def test_eos_quick(base: Path) -> None:
    pytest.importorskip("ase")
    eos = load("eos")
    wf, fits = eos.build(eos.QUICK, points=7)
    run = wf.run(base=base)

    assert run.ok, run.failures()
    st = run.status()
    assert st["counts"] == {"succeeded": len(eos.QUICK) * (7 + 1)}
    assert set(fits) == set(eos.QUICK)
    results = {m: run.result(t) for m, t in fits.items()}
    for metal, r in results.items():
        assert r["metal"] == metal
        assert r["points"] == 7
        assert all(isinstance(r[k], float) for k in ("a0", "B", "E0", "V0"))
        # The minimum lies inside the ±6 % window around the guess.
        assert abs(r["a0"] / eos.GUESS[metal] - 1) < 0.06
    cu = results["Cu"]
    assert cu["a0"] == pytest.approx(3.59, abs=0.02)
    assert cu["B"] == pytest.approx(134, abs=10)
    al = results["Al"]
    assert al["B"] < cu["B"]  # aluminium is much softer than copper

    table = eos.format_table(results)
    assert "Cu" in table and "Al" in table


def test_eos_main_uses_shoal_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ase")
    eos = load("eos")
    monkeypatch.setenv("SHOAL_BASE", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    eos.main(["--quick"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert set(eos.QUICK) <= set(lines)
    assert float(lines["Cu"][1]) == pytest.approx(3.59, abs=0.02)
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "shoal.db").exists()]
    assert len(runs) == 1
    assert not any((p / "shoal.db").exists() for p in tmp_path.iterdir())


@pytest.mark.slow
def test_eos_through_cli(tmp_path: Path) -> None:
    pytest.importorskip("ase")
    env = {**os.environ, "SHOAL_BASE": str(tmp_path / "runs")}
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", str(EXAMPLES / "eos.py"), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert any(r and r[0] == "Cu" for r in rows), proc.stdout
    assert any(r and r[0] == "Al" for r in rows), proc.stdout
    assert "succeeded" in proc.stderr  # the summary shoal run prints
    assert len(list((tmp_path / "runs").iterdir())) == 1


# -- commands.py -------------------------------------------------------------------------------
def test_commands_quick(base: Path) -> None:
    cmds = load("commands")
    temps = cmds.QUICK
    wf, sweep, summary = cmds.build(temps, steps=200)
    run = wf.run(base=base)

    assert run.ok, run.failures()
    assert run.status()["counts"] == {"succeeded": len(temps) + 2}  # + smoke test + summary

    # Every sweep point ran its command and printed a parseable result; env= reached it.
    for i, (T, t) in enumerate(zip(temps, sweep, strict=True)):
        out = run.result(t)
        assert out["returncode"] == 0
        assert Path(out["dir"]).is_dir()
        point = json.loads(out["stdout"].strip().splitlines()[-1])
        assert point["T"] == T
        assert point["steps"] == 200
        assert point["seed"] == i  # from the per-call env={"ANNEAL_SEED": ...}

    # The fan-in task saw all of them.
    s = run.result(summary)
    assert s["count"] == len(temps)
    assert [r["T"] for r in s["rows"]] == sorted(temps)
    assert all(f"{T:>6.2f}" in s["table"] for T in temps)
    # Physics: ordered well below T_c, disordered well above it.
    rows = {r["T"]: r for r in s["rows"]}
    assert rows[min(temps)]["magnetization"] > 0.9
    assert rows[max(temps)]["magnetization"] < 0.4

    # after=[smoke]: no sweep point started before the smoke test ended.
    with Reader(run.dir) as r:
        smoke_id = next(t.id for t in r.tasks() if t.name == "smoke-test")
        smoke_end = r.attempts(smoke_id)[-1]["ended"]
        for t in sweep:
            assert r.attempts(t.id)[0]["started"] >= smoke_end


def test_commands_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cmds = load("commands")
    monkeypatch.setenv("SHOAL_BASE", str(tmp_path))
    cmds.main(["--quick"])
    out = capsys.readouterr().out
    assert "specific heat peaks at T =" in out
    assert sum(1 for line in out.splitlines() if line.strip()[:1].isdigit()) == len(cmds.QUICK)


# -- melting.py --------------------------------------------------------------------------------
def test_melting_brackets_the_transition_within_the_resolution(base: Path) -> None:
    pytest.importorskip("ase")
    melting = load("melting")
    wf, strategy = melting.build(steps=400)
    run = wf.run(base=base)
    assert run.ok, run.failures()
    lo, hi = strategy.bracket()
    assert 0 < hi - lo <= 10.0
    assert strategy.results[lo] is False and strategy.results[hi] is True
    assert all(not strategy.results[t] for t in strategy.results if t < lo)
    uniform = int((1300 - 500) / 10) + 1
    assert len(strategy.results) < uniform / 4
    assert run.status()["total"] == len(strategy.results)
    with Reader(run.dir) as r:
        assert r.counts() == {"succeeded": len(strategy.results)}
    status = json.loads((run.dir / "status.json").read_text())
    lind = status["groups"]["md"]["fields"]["lindemann"]
    assert lind["count"] == len(strategy.results) and lind["max"] > 0.1 > lind["min"]


@pytest.mark.slow
def test_the_readme_states_the_number_of_md_runs_melting_py_takes(base: Path) -> None:
    """The README's count is that of the default run on 2 cores (the strategy refines with as
    many temperatures as there are cores; each temperature has its own seed)."""
    pytest.importorskip("ase")
    import re

    stated = re.search(r"MD runs it needed \((\d+) on 2 cores\)", README.read_text())
    assert stated, "the README no longer states melting.py's number of MD runs on 2 cores"
    wf, strategy = load("melting").build()
    run = wf.run(base=base, cpus=2)
    assert run.ok, run.failures()
    assert len(strategy.results) == int(stated.group(1))


def test_the_readme_and_ising_yaml_state_the_same_duration() -> None:
    import re

    readme = re.search(
        r"examples/ising.yaml`: .*?about (\d+) s on 2 cores", README.read_text(), re.S
    )
    yaml = re.search(r"run it \(about (\d+) s on 2 cores\)", (EXAMPLES / "ising.yaml").read_text())
    assert readme and yaml, "the README or ising.yaml no longer states the duration"
    assert readme.group(1) == yaml.group(1)


# -- ising.yaml (a config-file ensemble) -------------------------------------------------------
def test_ising_config_finds_the_specific_heat_peak_near_onsager(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("numpy")
    import shoal
    from shoal.config import load
    from shoal.config.build import workflow

    monkeypatch.chdir(EXAMPLES.parent)  # its commands name examples/scripts/anneal.py
    ens = load(EXAMPLES / "ising.yaml", ["anneal.sweep.steps=[200]"])
    assert ens.size == 11 * 3 + 1
    wf = workflow(ens)
    run = shoal.run(wf, base=base, **ens.run_options())
    assert run.ok, run.failures()
    (peak,) = [t for t in wf.tasks if t.options.tags[0] == "peak"]
    result = run.result(peak)
    assert result["runs"] == 33
    assert 2.0 <= result["Tc"] <= 2.6  # Onsager's 2.269, on a 16 x 16 lattice


# -- .gitignore ------------------------------------------------------------------------------------
def test_gitignore_ignores_run_directories_of_any_year_and_nothing_else(tmp_path: Path) -> None:
    import shutil

    from shoal.runtime.api import new_rundir

    root = EXAMPLES.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a git checkout")
    name = new_rundir(tmp_path, "eos").name  # as shoal names them now
    ignored = [
        f"{name}/shoal.db",
        f"{name}-1/shoal.db",  # a second run in the same second
        "my-flow-20310615-120000/shoal.db",
        "examples/ising-19991231-235959/status.json",
        "ising-20300101-000000-12/tasks/3/stdout",
    ]
    kept = ["examples/ising.yaml", "bench/run-2026.py", "docs/eos-2026-notes.md"]
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=root,
        input="\n".join(ignored + kept) + "\n",
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ignored, out.stdout + out.stderr


# -- jobflow_eos.py ------------------------------------------------------------------------------
def test_jobflow_eos_through_cli(tmp_path: Path) -> None:
    """The jobflow example through ``shoal run``: Cu's refined fit is EMT's, the job that was
    replaced reads as its fine fit, and ``shoal logs UUID`` finds the job's newest index."""
    pytest.importorskip("ase")
    pytest.importorskip("jobflow")
    env = {**os.environ, "SHOAL_BASE": str(tmp_path / "runs")}
    cli = [sys.executable, "-m", "shoal.cli.main"]
    proc = subprocess.run(
        [*cli, "run", str(EXAMPLES / "jobflow_eos.py"), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert float(rows["Cu"][1]) == pytest.approx(3.59, abs=0.02)
    assert float(rows["Cu"][2]) == pytest.approx(134, abs=10)
    assert float(rows["Al"][2]) < float(rows["Cu"][2])
    assert rows["Cu"][3] == "7"  # the fine scan's fit, not the coarse one
    (rundir,) = (tmp_path / "runs").iterdir()
    with Reader(rundir) as r:
        refine = next(t for t in r.tasks() if t.name.startswith("refine "))
        uuid = refine.name.split()[1].split("/")[0]
        assert r.find(uuid).name == f"store_inputs {uuid}/2"
    logs = subprocess.run(
        [*cli, "logs", uuid, "--run", str(rundir)], capture_output=True, text=True, timeout=60
    )
    assert logs.returncode == 0 and f"{uuid}/2: succeeded" in logs.stdout


# -- atomate2_eos.py -----------------------------------------------------------------------------
def test_atomate2_eos_through_cli(tmp_path: Path) -> None:
    """atomate2's own EOS flow with EMT Makers, through ``shoal run``: the relaxed and the
    fitted lattice constants of copper agree and are EMT's (ASE alone: 3.5898 Å relaxed,
    133.6 GPa over ±5 %), the strain job's Response added the cells, and no job wrote into the
    directory the run was started from."""
    pytest.importorskip("atomate2", reason="atomate2 is not installed (pip install atomate2)")
    env = {**os.environ, "SHOAL_BASE": str(tmp_path / "runs")}
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", str(EXAMPLES / "atomate2_eos.py")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    numbers = {
        line.split()[0] + (" " + line.split()[1] if line.startswith("a0") else ""): line
        for line in lines
    }
    assert "Cu: 10 jobs run, 7 cells in the fit" in lines, proc.stdout
    relaxed = float(numbers["a0 relaxed"].split()[2])
    fitted = float(numbers["a0 fitted"].split()[2])
    bulk = float(numbers["B"].split()[1])
    assert relaxed == pytest.approx(3.5898, abs=0.002)
    assert fitted == pytest.approx(relaxed, abs=0.002)
    assert bulk == pytest.approx(133.6, abs=2.0)
    assert not list(work.iterdir()), "a job wrote into the directory the run started from"


# -- lj_liquid.py (LAMMPS) ---------------------------------------------------------------------
@pytest.mark.usefixtures("lammps")
def test_lj_liquid_quick(base: Path) -> None:
    """Real ``lmp`` runs on two MPI ranks each, one per temperature, then the analysis: the
    pressure recomputed from g(r) matches LAMMPS's from the forces, and rises with T."""
    np = pytest.importorskip("numpy")
    lj = load("lj_liquid")
    mpi = lj.mpi_for("lmp")
    temps = lj.QUICK
    wf, runs, result = lj.build(temps, steps=1000, cells=5, env=mpi["env"])
    run = wf.run(base=base, launcher=mpi["launcher"], mpi=mpi["mpi"])

    assert run.ok, run.failures()
    assert run.status()["counts"] == {"succeeded": len(temps) + 1}
    folders = [Path(run.result(t)["dir"]) for t in runs]
    for folder in folders:  # each ran in its own task folder, on two ranks
        assert {"log.lammps", "rdf.dat", "averages.dat"} <= {p.name for p in folder.iterdir()}
        assert f"on {lj.RANKS} procs" in (folder / "log.lammps").read_text()
        assert folder.parent == run.dir / "tasks"
    out = run.result(result)
    assert out["ok"], out["table"]
    assert [row["T"] for row in out["rows"]] == list(temps)
    assert out["worst"] < lj.TOLERANCE  # the virial theorem, two ways
    assert out["held"] < 0.03  # the thermostat held each temperature
    pressures = [row["P_lammps"] for row in out["rows"]]
    assert pressures == sorted(pressures) and out["slope"] > 0
    # Recompute one pressure from the files, independently of the analysis task.
    rdf = np.loadtxt(folders[0] / "rdf.dat", skiprows=4)
    temp = np.loadtxt(folders[0] / "averages.dat", ndmin=2)[-1, 1]
    r, g = rdf[:, 1], rdf[:, 2]
    y = 24 * (2 * r**-10 - r**-4) * g
    virial = 2 * np.pi / 3 * lj.RHO**2 * float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(r)))
    assert lj.RHO * temp + virial == pytest.approx(out["rows"][0]["P_gr"], rel=0.01)


@pytest.mark.usefixtures("lammps")
def test_lj_liquid_finds_the_mpi_that_matches_lmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``lmp`` linked with Open MPI with only an MPICH ``mpiexec`` on PATH is refused with
    what to install: two serial copies would otherwise write over each other's files."""
    lj = load("lj_liquid")
    assert lj.mpi_for("lmp")["flavor"] in ("openmpi", "mpich")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "lmp").symlink_to(shutil.which("lmp") or "lmp")
    for name in ("mpiexec", "mpiexec.openmpi", "mpiexec.mpich"):
        (fake / name).write_text("#!/bin/sh\necho 'HYDRA build details:'\necho 'Version: 4.1'\n")
        (fake / name).chmod(0o755)
    if lj.mpi_for("lmp")["flavor"] == "mpich":
        for name in ("mpiexec", "mpiexec.openmpi", "mpiexec.mpich"):
            (fake / name).write_text("#!/bin/sh\necho 'mpiexec (OpenRTE) 4.1.4'\n")
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")  # the fakes first
    with pytest.raises(RuntimeError, match=r"is linked with (openmpi|mpich), and no mpiexec of"):
        lj.mpi_for(str(fake / "lmp"))
    with pytest.raises(RuntimeError, match=r"no LAMMPS binary 'no-such-lmp'"):
        lj.mpi_for("no-such-lmp")
