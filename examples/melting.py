"""Adaptive sampling: bracket the melting temperature of a Cu55 cluster to within 10 K.

What this example shows:

* **A strategy steers the campaign.** ``Bracket`` (a ``shoal.Strategy``) submits a coarse
  temperature grid when the run starts. Each time the machine has free cores and nothing is
  ready (``on_idle``), it looks at the results so far, finds the two neighbouring temperatures
  where the cluster goes from solid to liquid, and submits new temperatures inside that
  bracket, as many as there are cores. It is done when the bracket is narrower than the
  resolution. No job per decision: the strategy runs inside the driver, between tasks.
* **Group statistics.** The MD tasks carry the tag ``md``, and the workflow tracks their
  Lindemann index (``track={"lindemann": "lindemann"}``): ``shoal status`` shows its mean,
  spread and quantiles beside the run times.
* **Memory stored with the run.** The strategy keeps its bracket in ``ctl.memory``, which
  shoal writes to the run's database after every call.

The physics: Langevin molecular dynamics of a 55-atom Mackay icosahedron of copper with ASE's
EMT potential, one run per temperature. A run counts as liquid when the Lindemann index (the
relative spread of interatomic distances over the run) exceeds 0.1, the usual threshold. Small
clusters melt well below the bulk (1358 K), and over a few picoseconds melting is a matter of
chance near the transition, so the bracket is that of this model at this time scale; each
temperature has its own seed, so a rerun gives the same answer.

Run it with ``python examples/melting.py`` or ``shoal run examples/melting.py``; add
``--steps 400`` for shorter (noisier) MD runs. It prints the bracket and the number of MD runs
it took, against the number a uniform grid of the same resolution would need.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import shoal

THRESHOLD = 0.1  # Lindemann index above which the cluster counts as liquid


@shoal.task(tags="md")
def md(temperature: float, steps: int = 800) -> dict[str, Any]:
    """Langevin MD of Cu55 at ``temperature`` (K); returns the Lindemann index."""
    import warnings

    import numpy as np
    from ase import units
    from ase.calculators.emt import EMT
    from ase.cluster import Icosahedron
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    warnings.filterwarnings("ignore", category=FutureWarning)  # ASE's note on fixcm
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    atoms = Icosahedron("Cu", 3)  # 55 atoms
    atoms.calc = EMT()
    rng = np.random.default_rng(int(temperature * 10))
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=temperature, friction=0.05, rng=rng)
    dyn.run(steps // 4)  # let it equilibrate
    upper = np.triu_indices(len(atoms), 1)
    frames: list[Any] = []

    def sample() -> None:
        p = atoms.get_positions()
        frames.append(np.linalg.norm(p[:, None] - p[None], axis=-1)[upper])

    dyn.attach(sample, interval=10)
    dyn.run(steps)
    r = np.array(frames)
    lindemann = float((r.std(0) / r.mean(0)).mean())
    return {
        "temperature": temperature,
        "lindemann": lindemann,
        "melted": lindemann > THRESHOLD,
        "energy": float(atoms.get_potential_energy() / len(atoms)),
    }


class Bracket(shoal.Strategy):
    """Refine the temperatures around the solid-to-liquid change until it is narrow enough."""

    tags = ("md",)

    def __init__(self, low: float, high: float, step: float, resolution: float, steps: int):
        self.grid = [low + step * i for i in range(round((high - low) / step) + 1)]
        self.resolution = resolution
        self.steps = steps
        self.results: dict[float, bool] = {}  # temperature -> melted
        self.flying = 0

    def bracket(self) -> tuple[float, float] | None:
        """(highest solid temperature below the lowest liquid one, that liquid one)."""
        liquid = [t for t, melted in self.results.items() if melted]
        if not liquid:
            return None
        hi = min(liquid)
        solid = [t for t, melted in self.results.items() if not melted and t < hi]
        return (max(solid), hi) if solid else None

    def submit(self, ctl: shoal.Controller, temperatures: list[float]) -> None:
        new = [t for t in temperatures if t not in self.results]
        self.flying += len(new)
        ctl.submit(*[md(t, self.steps) for t in new])

    def on_start(self, ctl: shoal.Controller) -> None:
        self.submit(ctl, self.grid)

    def on_result(self, event: shoal.Event, ctl: shoal.Controller) -> None:
        self.flying -= 1
        if event.state != "succeeded":
            raise RuntimeError(f"MD at {event.task!r} did not succeed: {event.error}")
        out = event.result
        self.results[out["temperature"]] = out["melted"]
        ctl.memory["bracket"] = self.bracket()
        ctl.memory["runs"] = len(self.results)

    def on_idle(self, ctl: shoal.Controller) -> None:
        if self.flying or self.done(ctl):
            return
        b = self.bracket()
        if b is None:
            raise RuntimeError(
                f"no solid-to-liquid change between {self.grid[0]} K and {self.grid[-1]} K: "
                "widen the grid"
            )
        lo, hi = b
        k = max(2, ctl.resources()["cores"])  # one new temperature per core
        points = [round(lo + (hi - lo) * (i + 1) / (k + 1), 2) for i in range(k)]
        self.submit(ctl, points)

    def done(self, ctl: shoal.Controller) -> bool:
        b = self.bracket()
        return b is not None and b[1] - b[0] <= self.resolution


def build(
    low: float = 500,
    high: float = 1300,
    step: float = 200,
    resolution: float = 10,
    steps: int = 800,
) -> tuple[shoal.Workflow, Bracket]:
    wf = shoal.Workflow("melting", track={"lindemann": "lindemann"})
    strategy = Bracket(low, high, step, resolution, steps)
    wf.add(strategy)
    return wf, strategy


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--low", type=float, default=500.0, help="coarse grid start (K)")
    p.add_argument("--high", type=float, default=1300.0, help="coarse grid end (K)")
    p.add_argument("--step", type=float, default=200.0, help="coarse grid step (K)")
    p.add_argument("--resolution", type=float, default=10.0, help="bracket width wanted (K)")
    p.add_argument("--steps", type=int, default=800, help="MD steps per run (5 fs each)")
    args = p.parse_args(argv)
    wf, strategy = build(args.low, args.high, args.step, args.resolution, args.steps)
    run = wf.run(base=os.environ.get("SHOAL_BASE") or None)
    b = strategy.bracket()
    if b is None or not run.ok:
        print(f"no bracket found; see {run.dir}", file=sys.stderr)
        return 1
    uniform = round((args.high - args.low) / args.resolution) + 1
    print(f"Cu55 melts between {b[0]:.1f} K (solid) and {b[1]:.1f} K (liquid)")
    print(
        f"{len(strategy.results)} MD runs; a uniform grid of {args.resolution:g} K over "
        f"{args.low:g}-{args.high:g} K needs {uniform}"
    )
    for t in sorted(strategy.results):
        print(f"  {t:8.1f} K  {'liquid' if strategy.results[t] else 'solid'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
