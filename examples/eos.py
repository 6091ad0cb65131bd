"""Equations of state of fcc metals with ASE's EMT potential: fan-out, then fan-in.

What this example shows:

* **Fan-out.** For every metal, one task per strained cell: ``energy_at`` builds the fcc bulk
  cell at one lattice constant (within ±6 % of a starting guess), attaches the EMT calculator
  and returns ``{"a", "volume", "energy"}``. These tasks are independent, so shoal runs them
  side by side on every core it has.
* **Fan-in through references.** ``fit_eos`` takes a *list* of the strained tasks' outputs
  (``[t.out for t in points]``). Calling it runs nothing: it records a task that depends on
  all of them, and shoal replaces each reference by the real value before the fit runs.
  ``t.out["energy"]`` would pass just one field; passing ``t.out`` passes the whole dict.
* **Results after the run.** ``run.result(fits[metal])`` reads each fit back from the run
  directory, and the script prints the table of lattice constants and bulk moduli.

Run it with ``python examples/eos.py`` or, with a progress bar and a summary,
``shoal run examples/eos.py`` (add ``--quick`` for two metals and fewer points). Run
directories go to ``$SHOAL_BASE`` if set, else to the current directory.

EMT is a cheap effective-medium potential (Jacobsen, Stoltze, Nørskov), fitted to these seven
metals; its numbers are close to experiment for Cu (a0 ≈ 3.59 Å, B ≈ 134 GPa), less so for
others. Each energy takes well under a millisecond, so the whole example takes seconds; swap
EMT for a DFT calculator and the same workflow runs a real study.
"""

from __future__ import annotations

import argparse
import os
import sys

import shoal

# Starting guesses for the fcc lattice constant (Å), roughly the experimental values.
GUESS = {
    "Cu": 3.61,
    "Ag": 4.09,
    "Au": 4.08,
    "Ni": 3.52,
    "Pd": 3.89,
    "Pt": 3.92,
    "Al": 4.05,
}
QUICK = ("Cu", "Al")


@shoal.task
def energy_at(metal: str, a: float) -> dict[str, float]:
    """Energy (eV per atom) of the primitive fcc cell of ``metal`` at lattice constant ``a``."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk(metal, "fcc", a=a)
    atoms.calc = EMT()
    return {
        "a": float(a),
        "volume": float(atoms.get_volume()),  # Å^3 per atom (one atom in the primitive cell)
        "energy": float(atoms.get_potential_energy()),
    }


@shoal.task
def fit_eos(metal: str, points: list[dict[str, float]]) -> dict[str, float]:
    """Fit a Birch-Murnaghan equation of state to the strained points of one metal.

    Returns the equilibrium lattice constant ``a0`` (Å), bulk modulus ``B`` (GPa), minimum
    energy ``E0`` (eV/atom) and equilibrium volume ``V0`` (Å^3/atom).
    """
    from ase.eos import EquationOfState
    from ase.units import GPa

    volumes = [p["volume"] for p in points]
    energies = [p["energy"] for p in points]
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    # The fcc conventional cell holds 4 atoms: a0^3 = 4 V0.
    return {
        "metal": metal,
        "a0": float((4 * v0) ** (1 / 3)),
        "B": float(b / GPa),
        "E0": float(e0),
        "V0": float(v0),
        "points": len(points),
    }


def strains(points: int, spread: float = 0.06) -> list[float]:
    """``points`` scale factors evenly spaced in [1 - spread, 1 + spread]."""
    if points < 5:
        raise ValueError("an equation-of-state fit needs at least 5 points")
    step = 2 * spread / (points - 1)
    return [1 - spread + i * step for i in range(points)]


def build(
    metals: tuple[str, ...] | list[str] = tuple(GUESS), points: int = 11, spread: float = 0.06
) -> tuple[shoal.Workflow, dict[str, shoal.Task]]:
    """The workflow and the fit task of each metal (``run.result(fits["Cu"])["a0"]``)."""
    fits: dict[str, shoal.Task] = {}
    with shoal.Workflow("eos") as wf:
        for metal in metals:
            a = GUESS[metal]
            strained = [energy_at(metal, a * s) for s in strains(points, spread)]
            # Fan-in: a list of references; the fit waits for all of them.
            fits[metal] = fit_eos.options(name=f"fit-{metal}")(metal, [t.out for t in strained])
    return wf, fits


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: metal, a0 (Å), B (GPa), E0 (eV/atom)."""
    lines = [f"{'metal':<6} {'a0 (Å)':>8} {'B (GPa)':>8} {'E0 (eV)':>9}", "-" * 34]
    for metal, r in results.items():
        lines.append(f"{metal:<6} {r['a0']:>8.3f} {r['B']:>8.1f} {r['E0']:>9.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two metals, 7 points each")
    args = parser.parse_args(argv)

    metals, points = (QUICK, 7) if args.quick else (tuple(GUESS), 11)
    wf, fits = build(metals, points)
    run = wf.run(base=os.environ.get("SHOAL_BASE") or os.getcwd())
    if not run.ok:
        for f in run.failures():
            print(f"failed: #{f['id']} {f['name']}: {f['reason']} (logs: {f['logs']})")
        sys.exit(1)
    print(format_table({m: run.result(t) for m, t in fits.items()}))


if __name__ == "__main__":
    main()
