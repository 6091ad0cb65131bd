"""W3: packing efficiency of sleep tasks of mixed sizes on a pretend 16-core node.

400 Python tasks that sleep d seconds, d lognormal with median 0.1 s (sigma 0.8), each asking
for 1, 2 or 4 cores (both drawn from random.Random(42)), run with ``wf.run(cpus=16)``.
Efficiency = max(sum(d * cpus) / 16, max d) / makespan, the lower bound on any schedule's
makespan over the one measured. Two makespans: end to end (the wall time of ``wf.run``) and
first start to last end (``attempts.started`` / ``attempts.ended`` in the store). The policies
``backfill`` (target >= 0.97, first start to last end) and ``waves`` run alternately.

    python bench/w3.py [--tasks 400] [--order largest|fifo] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from typing import Any

import common

import shoal
from shoal.store.queries import Reader

CORES = 16
TARGET = 0.97
POLICIES = ("backfill", "waves")


def nap(d: float) -> float:
    time.sleep(d)
    return d


def workload(n: int, seed: int = 42) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d = rng.lognormvariate(math.log(0.1), 0.8)
        out.append((d, rng.choice((1, 2, 4))))
    return out


def bound(tasks: list[tuple[float, int]]) -> float:
    """The shortest makespan any schedule could have."""
    return max(sum(d * c for d, c in tasks) / CORES, max(d for d, _ in tasks))


def shoal_run(
    tasks: list[tuple[float, int]], policy: str, timeout: float | None, **options: Any
) -> dict[str, float]:
    lower = bound(tasks)
    with common.tempbase() as base:
        fn = shoal.task(nap)
        with shoal.Workflow(f"w3-{policy}") as wf:
            for d, c in tasks:
                fn.options(cpus=c)(d)
        t0, clock0 = time.perf_counter(), time.time()
        run = common.run_shoal(wf, base, timeout, cpus=CORES, policy=policy, **options)
        wall, clock1 = time.perf_counter() - t0, time.time()
        with Reader(run.dir) as r:
            first, last, count = r.conn.execute(
                "SELECT min(started), max(ended), count(*) FROM attempts"
            ).fetchone()
        if count != len(tasks):
            raise SystemExit(f"{count} attempts for {len(tasks)} tasks (retries?)")
    span = last - first
    return {
        "wall_s": wall,
        "span_s": span,
        "eff_wall": lower / wall,
        "eff_span": lower / span,
        "lead_s": first - clock0,  # wf.run called -> first task started
        "tail_s": clock1 - last,  # last task ended -> wf.run returned
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--order", help="shoal's order= (default: shoal's own)")
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    opts = common.shoal_options(a)
    if a.order:
        opts["order"] = a.order
    tasks = workload(a.tasks, a.seed)
    lower = bound(tasks)

    runs = common.alternate(
        {pol: (lambda pol=pol: shoal_run(tasks, pol, a.run_timeout, **opts)) for pol in POLICIES},
        a.repeats,
        not a.quiet,
    )
    m = {pol: common.medians(runs[pol]) for pol in POLICIES}
    bf, wv = m["backfill"], m["waves"]
    met = bf["eff_span"] >= TARGET
    note = f" [order={a.order}]" if a.order else ""
    rows = [
        common.row(
            f"W3 backfill{note} efficiency, first start to last end",
            bf["span_s"],
            lower,
            bf["eff_span"],
            f">= {TARGET}",
            met,
            "s",
        ),
        common.row(
            f"W3 backfill{note} efficiency, end to end (wf.run)",
            bf["wall_s"],
            lower,
            bf["eff_wall"],
            "-",
            None,
            "s",
        ),
        common.row(
            f"W3 waves{note} efficiency, first start to last end",
            wv["span_s"],
            lower,
            wv["eff_span"],
            "- (comparison)",
            None,
            "s",
        ),
        common.row(
            f"W3 waves{note} efficiency, end to end (wf.run)",
            wv["wall_s"],
            lower,
            wv["eff_wall"],
            "- (comparison)",
            None,
            "s",
        ),
    ]
    summary = (
        f"W3 {a.tasks} sleep tasks on {CORES} pretend cores{note}, bound {lower:.2f} s: "
        f"backfill {bf['span_s']:.2f} s first-start-to-last-end (eff {bf['eff_span']:.3f}, "
        f"target >= {TARGET}: {'met' if met else 'NOT met'}), {bf['wall_s']:.2f} s end to end "
        f"(eff {bf['eff_wall']:.3f}; {bf['lead_s']:.2f} s to the first start, {bf['tail_s']:.2f} s "
        f"after the last end); waves {wv['span_s']:.2f} s (eff {wv['eff_span']:.3f}), "
        f"{wv['wall_s']:.2f} s end to end (eff {wv['eff_wall']:.3f})"
    )
    data = {"tasks": a.tasks, "seed": a.seed, "bound_s": lower, "runs": runs}
    common.report("w3", summary, rows, data, a)


if __name__ == "__main__":
    main()
