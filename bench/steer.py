"""Steering costs: rule reaction latency, and W1 with a no-op rule on every task.

Latency: a rule on ``task-succeeded`` submits the next task of a chain of ``--chain`` tasks.
For each link, the latency is the submitted task's start (in its worker) minus the end of the
task whose success caused it, both from the attempts table. Reference, in the same
invocation: the same chain wired as static dependencies (``b = f(a)``), which goes through
the same driver loop without any rule. Target: median <= 5 ms with free resources.

Throughput: W1 (``--tasks`` no-op tasks, 2 workers) with a no-op ``task-succeeded`` rule
registered for every task, against W1 without it, alternated. Target: >= 0.8x.

    python bench/steer.py [--chain 300] [--tasks 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import common

import shoal

LATENCY_TARGET = 0.005
RATE_TARGET = 0.8


def noop(i: int) -> int:
    return i


def link(i: int) -> int:
    return i + 1


def gaps(rundir: Path) -> list[float]:
    """Start of each task minus the end of the task before it (ids in chain order)."""
    with sqlite3.connect(rundir / "shoal.db") as c:
        rows = c.execute(
            "SELECT task, started, ended FROM attempts WHERE outcome='succeeded' ORDER BY task"
        ).fetchall()
    return [b[1] - a[2] for a, b in itertools.pairwise(rows)]


def chain_by_rule(n: int, timeout: float | None) -> dict[str, float]:
    fn = shoal.task(link)
    with common.tempbase() as base:
        with shoal.Workflow("chain-rule") as wf:
            fn(0)

        @wf.on("task-succeeded")
        def next_link(event: Any, ctl: Any) -> None:
            if event.result < n:
                ctl.submit(fn(event.result))

        run = common.run_shoal(wf, base, timeout, cpus=2)
        g = gaps(run.dir)
    assert len(g) == n - 1, len(g)
    return {"median_ms": statistics.median(g) * 1000, "p90_ms": sorted(g)[int(0.9 * len(g))] * 1000}


def chain_static(n: int, timeout: float | None) -> dict[str, float]:
    fn = shoal.task(link)
    with common.tempbase() as base:
        with shoal.Workflow("chain-static") as wf:
            t = fn(0)
            for _ in range(n - 1):
                t = fn(t)
        run = common.run_shoal(wf, base, timeout, cpus=2)
        g = gaps(run.dir)
    return {"median_ms": statistics.median(g) * 1000, "p90_ms": sorted(g)[int(0.9 * len(g))] * 1000}


def w1(n: int, timeout: float | None, rule: bool) -> dict[str, float]:
    fn = shoal.task(noop)
    with common.tempbase() as base:
        t0 = time.perf_counter()
        with shoal.Workflow("w1-rule" if rule else "w1") as wf:
            for i in range(n):
                fn(i)
        calls = [0]
        if rule:

            @wf.on("task-succeeded")
            def nothing(event: Any, ctl: Any) -> None:
                calls[0] += 1

        common.run_shoal(wf, base, timeout, cpus=2)
        took = time.perf_counter() - t0
    if rule and calls[0] != n:
        raise SystemExit(f"the rule ran {calls[0]} times for {n} tasks")
    return {"rate": n / took}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chain", type=int, default=300)
    p.add_argument("--tasks", type=int, default=20_000)
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    timeout = a.run_timeout or None

    lat = common.alternate(
        {
            "static chain": lambda: chain_static(a.chain, timeout),
            "rule chain": lambda: chain_by_rule(a.chain, timeout),
        },
        a.repeats,
        not a.quiet,
    )
    ref_ms = common.medians(lat["static chain"])["median_ms"]
    rule = common.medians(lat["rule chain"])
    lat_met = rule["median_ms"] <= LATENCY_TARGET * 1000

    thr = common.alternate(
        {
            "w1": lambda: w1(a.tasks, timeout, False),
            "w1 + rule": lambda: w1(a.tasks, timeout, True),
        },
        a.repeats,
        not a.quiet,
    )
    base_rate = common.medians(thr["w1"])["rate"]
    rule_rate = common.medians(thr["w1 + rule"])["rate"]
    ratio = rule_rate / base_rate
    rate_met = ratio >= RATE_TARGET

    summary = (
        f"rule latency (success -> start of the submitted task): median "
        f"{rule['median_ms']:.2f} ms, p90 {rule['p90_ms']:.2f} ms; static dependency "
        f"{ref_ms:.2f} ms (target <= 5 ms: {'met' if lat_met else 'NOT met'}). "
        f"W1 with a no-op rule {rule_rate:,.0f} tasks/s against {base_rate:,.0f} without: "
        f"{ratio:.2f}x (target >= {RATE_TARGET}x: {'met' if rate_met else 'NOT met'})"
    )
    rows = [
        common.row(
            f"rule reaction latency, chain of {a.chain}",
            rule["median_ms"],
            ref_ms,
            rule["median_ms"],
            "<= 5 ms",
            lat_met,
            "ms",
        ),
        common.row(
            f"W1 {a.tasks} tasks with a no-op task-succeeded rule",
            rule_rate,
            base_rate,
            ratio,
            f">= {RATE_TARGET}x",
            rate_met,
            "tasks/s",
        ),
    ]
    common.report("steer", summary, rows, {"latency": lat, "throughput": thr}, a)


if __name__ == "__main__":
    main()
