"""Equations of state with jobflow, run by shoal: the same Jobs and Flows, packed onto every core.

What this example shows:

* **jobflow, unchanged.** ``energy_at`` and ``fit_eos`` are jobflow ``@job`` functions, wired
  by output references into one ``Flow``, as in any jobflow or atomate2 workflow.
* **A Response that steers the run.** ``refine`` looks at a coarse scan of each metal and
  replaces itself with a fine scan around the minimum it found, plus the fit of that scan
  (``Response(replace=Flow(..., output=fit.output))``): the jobs that use ``refine``'s output
  wait for the fine fit, as jobflow promises.
* **shoal runs it.** ``shoal.run(flow, store=store)`` runs the jobs side by side, keeps every
  output in the run directory, and fills the jobflow ``JobStore`` as jobflow's own
  ``run_locally`` would; ``run.result(job)`` reads a job's newest output.

Run it with ``python examples/jobflow_eos.py`` (``--quick``: two metals) or
``shoal run examples/jobflow_eos.py``. Needs ``pip install 'shoal[jobflow,examples]'``.
EMT's numbers for copper are close to experiment (a0 ≈ 3.59 Å, B ≈ 134 GPa).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from jobflow import Flow, JobStore, Response, job
from maggma.stores import MemoryStore

import shoal

GUESS = {"Cu": 3.61, "Ag": 4.09, "Au": 4.08, "Ni": 3.52, "Pd": 3.89, "Pt": 3.92, "Al": 4.05}
QUICK = ("Cu", "Al")


@job
def energy_at(metal: str, a: float) -> dict[str, float]:
    """Energy (eV per atom) of the primitive fcc cell of ``metal`` at lattice constant ``a``."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk(metal, "fcc", a=a)
    atoms.calc = EMT()
    return {
        "a": float(a),
        "volume": float(atoms.get_volume()),
        "energy": float(atoms.get_potential_energy()),
    }


@job
def fit_eos(metal: str, points: list[dict[str, float]]) -> dict[str, Any]:
    """Birch-Murnaghan fit: a0 (Å), B (GPa), E0 (eV/atom)."""
    from ase.eos import EquationOfState
    from ase.units import GPa

    v0, e0, b = EquationOfState(
        [p["volume"] for p in points], [p["energy"] for p in points], eos="birchmurnaghan"
    ).fit()
    return {
        "metal": metal,
        "a0": float((4 * v0) ** (1 / 3)),
        "B": float(b / GPa),
        "E0": float(e0),
        "points": len(points),
    }


def scan(metal: str, centre: float, spread: float, points: int) -> list[Any]:
    """Jobs for ``points`` lattice constants evenly spread over ``centre * (1 ± spread)``."""
    step = 2 * spread / (points - 1)
    return [energy_at(metal, centre * (1 - spread + i * step)) for i in range(points)]


@job
def refine(metal: str, coarse: list[dict[str, float]], points: int) -> Response:
    """Replace this job with a fine scan (±2 %) around the coarse minimum, and its fit."""
    best = min(coarse, key=lambda p: p["energy"])
    fine = scan(metal, best["a"], 0.02, points)
    fit = fit_eos(metal, [j.output for j in fine])
    return Response(replace=Flow([*fine, fit], output=fit.output))


def build(metals: tuple[str, ...], points: int) -> tuple[Flow, dict[str, Any]]:
    """The flow, and the job of each metal whose output is its refined fit."""
    jobs: list[Any] = []
    fits: dict[str, Any] = {}
    for metal in metals:
        coarse = scan(metal, GUESS[metal], 0.08, points)
        fits[metal] = refine(metal, [j.output for j in coarse], points)
        jobs += [*coarse, fits[metal]]
    return Flow(jobs, name="jobflow-eos"), fits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two metals, 7 points each")
    args = parser.parse_args(argv)
    metals, points = (QUICK, 7) if args.quick else (tuple(GUESS), 9)
    flow, fits = build(metals, points)
    store = JobStore(MemoryStore())
    run = shoal.run(flow, store=store, base=os.environ.get("SHOAL_BASE") or os.getcwd())
    if not run.ok:
        for f in run.failures():
            print(f"failed: #{f['id']} {f['name']}: {f['reason']} (logs: {f['logs']})")
        sys.exit(1)
    print(f"{'metal':<6} {'a0 (Å)':>8} {'B (GPa)':>8} {'points':>7}")
    for metal, j in fits.items():
        r = run.result(j)  # the newest index: the fine fit that replaced the job
        assert r == store.get_output(j.uuid, load=True)  # the JobStore holds the same
        print(f"{metal:<6} {r['a0']:>8.3f} {r['B']:>8.1f} {r['points']:>7}")


if __name__ == "__main__":
    main()
