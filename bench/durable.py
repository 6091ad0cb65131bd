"""Durable runs: how fast a big run resumes, and what persisting costs in W1.

Resume: a run of ``--tasks`` (100,000) no-op tasks is stopped once half of them succeeded (a
rule stops it, which leaves the store exactly as a driver death would, minus the lost
attempts). The time from ``shoal.resume(run_dir)`` to the first dispatch of the resumed run
(the ``dispatched`` stamp of its first new attempt) is compared with the time from
``wf.run()`` to the first dispatch of a fresh run of the same size, in the same invocation.
Target: resume reaches its first dispatch within 5 s.

Store cost: W1 (``--w1`` no-op tasks, 2 workers) under cProfile; the store's share is the
time inside ``Writer.commit`` (the one transaction per loop iteration) over the driver's
whole time. Disk bytes per task: the size of ``shoal.db`` after the run, over the tasks.

    python bench/durable.py [--tasks 100000] [--w1 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sqlite3
import time
from pathlib import Path
from typing import Any

import common

import shoal

TARGET_S = 5.0


def noop(i: int) -> int:
    return i


def first_dispatch(rundir: Path, after: float) -> float:
    with sqlite3.connect(rundir / "shoal.db") as c:
        (t,) = c.execute("SELECT MIN(dispatched) FROM attempts WHERE dispatched >= ?", (after,))
        return float(t[0])


def fresh(n: int, base: Path) -> float:
    fn = shoal.task(noop)
    t0 = time.time()
    with shoal.Workflow("fresh") as wf:
        for i in range(n):
            fn(i)
    run = wf.run(base=base, cpus=2)
    return first_dispatch(run.dir, t0) - t0


def half_then_resume(n: int, base: Path) -> dict[str, float]:
    fn = shoal.task(noop)
    with shoal.Workflow("half") as wf:
        for i in range(n):
            fn(i)
    seen = [0]

    @wf.on("task-succeeded")
    def half(event: Any, ctl: Any) -> None:
        seen[0] += 1
        if seen[0] == n // 2:
            ctl.stop()

    run = wf.run(base=base, cpus=2)
    done = run.status()["counts"].get("succeeded", 0)
    t0 = time.time()
    again = shoal.resume(run.dir)
    took = first_dispatch(again.dir, t0) - t0
    assert again.ok and again.status()["counts"] == {"succeeded": n}, again.status()
    return {"resume_s": took, "succeeded_before": float(done)}


def resume_pair(n: int) -> tuple[dict[str, float], dict[str, float]]:
    with common.tempbase() as base:
        ref = {"first_dispatch_s": fresh(n, base)}
    with common.tempbase() as base:
        res = half_then_resume(n, base)
    return ref, res


def store_share(n: int) -> dict[str, float]:
    fn = shoal.task(noop)
    with common.tempbase() as base:
        with shoal.Workflow("w1") as wf:
            for i in range(n):
                fn(i)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        run = wf.run(base=base, cpus=2)
        prof.disable()
        wall = time.perf_counter() - t0
        size = (run.dir / "shoal.db").stat().st_size
    stats = pstats.Stats(prof)
    commit = sum(
        v[3]
        for k, v in stats.stats.items()
        if k[2] == "commit" and "writer" in k[0]  # type: ignore[attr-defined]
    )
    driver = sum(
        v[3]
        for k, v in stats.stats.items()
        if k[2] == "run" and k[0].endswith("driver.py")  # type: ignore[attr-defined]
    )
    return {
        "commit_s": commit,
        "driver_s": driver,
        "share": commit / driver if driver else 0.0,
        "bytes_per_task": size / n,
        "profiled_wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--w1", type=int, default=20_000)
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    refs, ress = [], []
    for i in range(a.repeats):
        ref, res = resume_pair(a.tasks)
        refs.append(ref)
        ress.append(res)
        if not a.quiet:
            print(f"  [{i + 1}/{a.repeats}] fresh {ref} resume {res}", flush=True)
    ref_s = common.median([r["first_dispatch_s"] for r in refs])
    res_s = common.median([r["resume_s"] for r in ress])
    share = [store_share(a.w1) for _ in range(a.repeats)]
    sh = common.medians(share)
    met = res_s <= TARGET_S
    summary = (
        f"resume of {a.tasks:,} tasks with {a.tasks // 2:,} succeeded: first dispatch after "
        f"{res_s:.2f} s (fresh run of the same size: {ref_s:.2f} s; target <= {TARGET_S} s: "
        f"{'met' if met else 'NOT met'}). W1 {a.w1:,}: the store's commits take "
        f"{sh['share'] * 100:.1f}% of the driver's time ({sh['commit_s']:.2f} of "
        f"{sh['driver_s']:.2f} s, profiled); {sh['bytes_per_task']:.0f} bytes per task on disk"
    )
    rows = [
        common.row(
            f"resume {a.tasks} tasks, half succeeded: first dispatch",
            res_s,
            ref_s,
            res_s,
            f"<= {TARGET_S} s",
            met,
            "s",
        ),
        common.row(
            f"W1 {a.w1}: store share of driver time", sh["share"], None, sh["share"], "-", None
        ),
        common.row(
            "W1: disk bytes per task", sh["bytes_per_task"], None, sh["bytes_per_task"], "-", None
        ),
    ]
    common.report("durable", summary, rows, {"resume": ress, "fresh": refs, "store": share}, a)


if __name__ == "__main__":
    main()
