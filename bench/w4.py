"""W4: a deep DAG of no-op tasks against the same number of independent ones.

DAG: 50 stages x 100 no-op Python tasks; task j of stage s takes the output of task j of stage
s-1 (``--parents chain``, the default) or of a random task of stage s-1 (``--parents random``,
random.Random(42)). Reference: W1, the same number of independent no-op tasks (5,000), measured
in the same invocation. Both use ``wf.run(cpus=2, base=tmp)`` and are timed end to end from
building the workflow to ``wf.run`` returning. Target: DAG rate >= 0.8x the independent rate.

    python bench/w4.py [--stages 50] [--width 100] [--parents chain|random] [--json PATH]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import common

import shoal

TARGET = 0.8


def noop(i: int) -> int:
    return i


def independent(n: int, timeout: float | None, **options: Any) -> float:
    with common.tempbase() as base:
        t0 = time.perf_counter()
        fn = shoal.task(noop)
        with shoal.Workflow("w4-flat") as wf:
            tasks = [fn(i) for i in range(n)]
        run = common.run_shoal(wf, base, timeout, cpus=2, **options)
        took = time.perf_counter() - t0
        if run.result(tasks[-1]) != n - 1:
            raise SystemExit("wrong result of the last independent task")
    return took


def dag(
    stages: int, width: int, parents: str, timeout: float | None, seed: int = 42, **options: Any
) -> float:
    rng = random.Random(seed)
    with common.tempbase() as base:
        t0 = time.perf_counter()
        fn = shoal.task(noop)
        with shoal.Workflow("w4-dag") as wf:
            prev = [fn(j) for j in range(width)]
            for _ in range(1, stages):
                if parents == "chain":
                    prev = [fn(prev[j].out) for j in range(width)]
                else:
                    prev = [fn(prev[rng.randrange(width)].out) for _ in range(width)]
        run = common.run_shoal(wf, base, timeout, cpus=2, **options)
        took = time.perf_counter() - t0
        last = run.result(prev[-1])
        if parents == "chain" and last != width - 1:
            raise SystemExit(f"wrong result at the end of the last chain: {last!r}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=int, default=50)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--parents", choices=("chain", "random"), default="chain")
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    opts = common.shoal_options(a)
    n = a.stages * a.width

    runs = common.alternate(
        {
            "independent": lambda: {"rate": n / independent(n, a.run_timeout, **opts)},
            "dag": lambda: {"rate": n / dag(a.stages, a.width, a.parents, a.run_timeout, **opts)},
        },
        a.repeats,
        not a.quiet,
    )
    ref = common.medians(runs["independent"])["rate"]
    sho = common.medians(runs["dag"])["rate"]
    ratio = sho / ref
    met = ratio >= TARGET
    summary = (
        f"W4 DAG {a.stages}x{a.width} ({a.parents}): {sho:,.0f} tasks/s, {n} independent "
        f"(W1) {ref:,.0f} tasks/s, ratio {ratio:.2f}x "
        f"(target >= {TARGET}x: {'met' if met else 'NOT met'})"
    )
    rows = [
        common.row(
            f"W4 DAG {a.stages}x{a.width} ({a.parents}) vs {n} independent",
            sho,
            ref,
            ratio,
            f">= {TARGET}x",
            met,
            "tasks/s",
        )
    ]
    data = {"stages": a.stages, "width": a.width, "parents": a.parents, "runs": runs}
    common.report("w4", summary, rows, data, a)


if __name__ == "__main__":
    main()
