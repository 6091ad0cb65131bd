"""W2: many tiny command tasks, shoal against a plain thread pool running subprocess.run.

shoal: ``shoal.command("/bin/true")`` called N times, ``wf.run(cpus=2, base=tmp)``, timed end
to end from building the workflow to ``wf.run`` returning.
Reference: ``ThreadPoolExecutor(2)`` running ``subprocess.run(["/bin/true"])`` N times, timed
from creating the pool to collecting every exit code.

    python bench/w2.py [--tasks 2000] [--prefetch N] [--json PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import time
from typing import Any

import common

import shoal

TARGET = 0.9


def true() -> int:
    return subprocess.run(["/bin/true"]).returncode


def reference(n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futures = [ex.submit(true) for _ in range(n)]
        codes = [f.result() for f in futures]
    took = time.perf_counter() - t0
    assert not any(codes), "a /bin/true failed"
    return {"rate": n / took}


def shoal_run(n: int, timeout: float | None, **options: Any) -> dict[str, float]:
    with common.tempbase() as base:
        t0 = time.perf_counter()
        cmd = shoal.command("/bin/true")
        with shoal.Workflow("w2") as wf:
            tasks = [cmd() for _ in range(n)]
        run = common.run_shoal(wf, base, timeout, cpus=2, **options)
        took = time.perf_counter() - t0
        last = run.result(tasks[-1])
        if last["returncode"] != 0:
            raise SystemExit(f"unexpected result of the last task: {last!r}")
    return {"rate": n / took}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=2_000)
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
    sho = common.medians(runs["shoal"])["rate"]
    ratio = sho / ref
    met = ratio >= TARGET
    note = "" if a.prefetch is None else f" [prefetch={a.prefetch}]"
    summary = (
        f"W2 {n} /bin/true commands{note}: shoal {sho:,.0f} tasks/s, ThreadPoolExecutor(2) + "
        f"subprocess.run {ref:,.0f} tasks/s, ratio {ratio:.2f}x "
        f"(target >= {TARGET}x: {'met' if met else 'NOT met'})"
    )
    rows = [
        common.row(
            f"W2 {n} /bin/true command tasks{note}",
            sho,
            ref,
            ratio,
            f">= {TARGET}x",
            met,
            "tasks/s",
        )
    ]
    common.report("w2", summary, rows, {"tasks": n, "runs": runs}, a)


if __name__ == "__main__":
    main()
