"""W1: many no-op Python tasks, shoal against a ProcessPoolExecutor.

shoal: ``wf.run(cpus=2, base=tmp)`` (2 persistent workers, the SQLite store on, default
prefetch), timed end to end from building the workflow to ``wf.run`` returning.
Reference: ``concurrent.futures.ProcessPoolExecutor(2)``, ``ex.submit(noop, i)`` one by one and
all results collected, timed from creating the pool to shutting it down.

    python bench/w1.py [--tasks 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
from typing import Any

import common

import shoal

TARGET = 1.5


def noop(i: int) -> int:
    return i


def reference(n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(noop, i) for i in range(n)]
        total = sum(f.result() for f in futures)
    took = time.perf_counter() - t0
    assert total == n * (n - 1) // 2, total
    return {"rate": n / took}


def shoal_run(n: int, timeout: float | None, **options: Any) -> dict[str, float]:
    """Build and run ``n`` independent no-op tasks (run directory deleted after)."""
    with common.tempbase() as base:
        t0 = time.perf_counter()
        fn = shoal.task(noop)
        with shoal.Workflow("w1") as wf:
            tasks = [fn(i) for i in range(n)]
        t1 = time.perf_counter()
        run = common.run_shoal(wf, base, timeout, cpus=2, **options)
        t2 = time.perf_counter()
        last = run.result(tasks[-1])
        if last != n - 1:
            raise SystemExit(f"unexpected result of the last task: {last!r}")
    return {"rate": n / (t2 - t0), "build_s": t1 - t0, "run_s": t2 - t1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=20_000)
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    n = a.tasks
    opts = common.shoal_options(a)

    runs = common.alternate(
        {
            "reference": lambda: reference(n),
            "shoal": lambda: shoal_run(n, a.run_timeout, **opts),
        },
        a.repeats,
        not a.quiet,
    )
    ref = common.medians(runs["reference"])["rate"]
    parts = common.medians(runs["shoal"])
    sho = parts["rate"]
    ratio = sho / ref
    met = ratio >= TARGET
    summary = (
        f"W1 {n} no-op tasks: shoal {sho:,.0f} tasks/s, ProcessPoolExecutor(2) {ref:,.0f} "
        f"tasks/s, ratio {ratio:.2f}x (target >= {TARGET}x: {'met' if met else 'NOT met'}); "
        f"shoal build {parts['build_s']:.2f} s + wf.run {parts['run_s']:.2f} s"
    )
    rows = [
        common.row(f"W1 {n} no-op Python tasks", sho, ref, ratio, f">= {TARGET}x", met, "tasks/s")
    ]
    common.report("w1", summary, rows, {"tasks": n, "runs": runs}, a)


if __name__ == "__main__":
    main()
