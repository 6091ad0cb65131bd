"""An atomate2 equation-of-state workflow, run by shoal: atomate2's own Makers and flow, with
ASE's EMT calculator, so that it needs no external code, no potential files and no network.

What this example shows:

* **atomate2, unchanged.** ``CommonEosMaker`` is atomate2's code-agnostic EOS flow: relax the
  structure, strain it, compute each strained cell, fit the equations of state. Its Makers
  here are two small subclasses of atomate2's ``AseRelaxMaker`` that use EMT: one relaxes
  cell and positions, one computes a fixed cell (``steps=1``, atomate2's static pattern).
* **shoal runs it** with ``shoal.run(flow, store=store)``: the six strained cells side by
  side, each job in its own folder, every output kept in the run directory and copied into
  the jobflow ``JobStore``. The driver imported atomate2 to build the flow, so the workers
  (forks of it) do not import it again: atomate2's import takes seconds.
* **Checked numbers.** EMT's copper: a0 = 3.590 Å and B = 134 GPa (ASE alone gives 3.5898 Å
  relaxed and 133.6 GPa from a Birch-Murnaghan fit over ±5 %); the relaxed and the fitted
  lattice constants must agree.

Run it with ``python examples/atomate2_eos.py`` or ``shoal run examples/atomate2_eos.py``
(``--metal Al`` for aluminium). Needs ``pip install 'shoal[jobflow]' atomate2``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from atomate2.ase.jobs import AseRelaxMaker
from atomate2.common.flows.eos import CommonEosMaker
from jobflow import Flow, JobStore, job
from maggma.stores import MemoryStore
from pymatgen.core import Lattice, Structure

import shoal

GUESS = {"Cu": 3.6, "Al": 4.0, "Ni": 3.5, "Ag": 4.1}


@dataclass
class EmtRelaxMaker(AseRelaxMaker):
    """Relax cell and positions with EMT. atomate2's EOS flow calls ``make(structure=...)``
    and the ASE Makers name that argument ``mol_or_struct``: ``make`` takes both names."""

    name: str = "EMT relax"
    relax_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"fmax": 1e-4, "final_atoms_object_file": None}
    )

    def _get_calculator(self) -> Any:
        from ase.calculators.emt import EMT

        return EMT(**self.calculator_kwargs)

    @job(data=["trajectory"])
    def make(self, structure: Structure, prev_dir: str | None = None) -> Any:
        return AseRelaxMaker.make.original(self, structure, prev_dir=prev_dir)


@dataclass
class EmtStaticMaker(EmtRelaxMaker):
    """The energy of a fixed cell with EMT (one step: atomate2's static)."""

    name: str = "EMT static"
    relax_cell: bool = False
    steps: int = 1


@job
def summarize(eos: dict[str, Any], relaxed: Structure) -> dict[str, Any]:
    """a0 from the relaxation and from the Birch-Murnaghan fit, B, B' and E0 per atom."""
    bm = eos["relax"]["EOS"]["birch_murnaghan"]
    atoms = len(relaxed)
    return {
        "a0_relax": relaxed.lattice.a,
        "a0_fit": (bm["v0"] * 4 / atoms) ** (1 / 3),  # the conventional cell has 4 atoms
        "B": bm["b0 GPa"],
        "B_prime": bm["b1"],
        "E0": bm["e0"] / atoms,
        "points": len(eos["relax"]["volume"]),
    }


def build(metal: str = "Cu", points: int = 6) -> tuple[Flow, Any]:
    """The flow (relax, strain, ``points`` fixed cells, fit, summary) and its summary job."""
    a = GUESS[metal]
    cell = Structure(
        Lattice.cubic(a), [metal] * 4, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    )
    eos = CommonEosMaker(
        name=f"{metal} EMT EOS",
        initial_relax_maker=EmtRelaxMaker(),
        eos_relax_maker=EmtStaticMaker(),
        static_maker=None,
        linear_strain=(-0.05, 0.05),
        number_of_frames=points,
    ).make(cell)
    summary = summarize(eos.output, eos.jobs[0].output.structure)
    return Flow([eos, summary], output=summary.output, name=f"{metal} EMT EOS"), summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metal", default="Cu", choices=sorted(GUESS))
    args = parser.parse_args(argv)
    flow, summary = build(args.metal)
    store = JobStore(MemoryStore())
    run = shoal.run(flow, store=store, base=os.environ.get("SHOAL_BASE") or os.getcwd())
    if not run.ok:
        for f in run.failures():
            print(f"failed: #{f['id']} {f['name']}: {f['reason']} (logs: {f['logs']})")
        sys.exit(1)
    r = run.result(summary)
    assert r == store.get_output(summary.uuid, load=True)  # the JobStore holds the same
    print(f"{args.metal}: {store.count()} jobs run, {r['points']} cells in the fit")
    print(f"a0 relaxed  {r['a0_relax']:.4f} Å")
    print(f"a0 fitted   {r['a0_fit']:.4f} Å")
    print(f"B           {r['B']:.1f} GPa   (B' {r['B_prime']:.2f})")
    print(f"E0          {r['E0']:.5f} eV/atom")


if __name__ == "__main__":
    main()
