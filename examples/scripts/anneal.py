"""A tiny stand-alone simulation: Metropolis Monte Carlo of the 2D Ising model.

It holds an L×L periodic lattice (J = 1, k_B = 1) at temperature ``--T`` for ``--steps``
sweeps, discards the first half as equilibration and prints one JSON line with the averages
per spin of the second half: energy, |magnetization|, specific heat and susceptibility.
Spins are updated on a checkerboard, so each half-sweep is a few numpy operations.

The seed comes from ``--seed``, else from the environment variable ``ANNEAL_SEED``, else 0,
so a workflow can set it per task with ``env=``. Only numpy and the standard library are used:
this is the kind of program a command task wraps.

    python anneal.py --T 2.3 --steps 400 --size 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def neighbours(s: np.ndarray) -> np.ndarray:
    return np.roll(s, 1, 0) + np.roll(s, -1, 0) + np.roll(s, 1, 1) + np.roll(s, -1, 1)


def simulate(T: float, steps: int, size: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    spins = np.ones((size, size), dtype=np.int8)  # cold start: all up
    ii, jj = np.indices((size, size))
    colours = [(ii + jj) % 2 == c for c in (0, 1)]
    n = size * size
    energies, mags = [], []
    accepted = 0
    for step in range(steps):
        for mask in colours:
            s = spins.astype(np.int64)
            dE = 2 * s * neighbours(s)  # energy change of flipping each spin
            flip = mask & (rng.random(spins.shape) < np.exp(-np.clip(dE, 0, None) / T))
            spins[flip] *= -1
            accepted += int(flip.sum())
        if step >= steps // 2:
            s = spins.astype(np.int64)
            energies.append(-float((s * (np.roll(s, 1, 0) + np.roll(s, 1, 1))).sum()))
            mags.append(abs(float(s.sum())))
    e = np.array(energies)
    m = np.array(mags)
    return {
        "T": T,
        "steps": steps,
        "size": size,
        "seed": seed,
        "energy": float(e.mean() / n),
        "magnetization": float(m.mean() / n),
        "specific_heat": float(e.var() / (n * T * T)),
        "susceptibility": float(m.var() / (n * T)),
        "acceptance": accepted / (steps * n),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="2D Ising Metropolis Monte Carlo")
    parser.add_argument("--T", type=float, required=True, help="temperature (J/k_B)")
    parser.add_argument("--steps", type=int, default=400, help="Monte Carlo sweeps")
    parser.add_argument("--size", type=int, default=16, help="lattice side L")
    parser.add_argument("--seed", type=int, default=None, help="default: $ANNEAL_SEED or 0")
    args = parser.parse_args(argv)
    if args.T <= 0 or args.steps < 2 or args.size < 2:
        parser.error("need T > 0, steps >= 2 and size >= 2")
    seed = args.seed if args.seed is not None else int(os.environ.get("ANNEAL_SEED", "0"))
    start = time.perf_counter()
    result = simulate(args.T, args.steps, args.size, seed)
    result["seconds"] = round(time.perf_counter() - start, 4)
    print(f"# ising L={args.size} T={args.T} steps={args.steps} seed={seed}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
