"""Outcome latency: how long a finished task's outcome waits before the driver records it.

The contract (docs/contract.md) bounds it: a Python task's outcome is never held in its
worker (it is sent before the next task starts); a command's waits at most 20 ms
(``worker.COMMAND_HOLD``) while the next queued command runs. This measures it on the fast
path, where it matters: tiny tasks queued behind each other on persistent workers, and a
long task queued behind tiny ones (whose outcomes must not wait for it). What is measured
includes the driver's own loop, which under a full load of tiny tasks handles outcomes in
batches (a commit each); that part is not held anywhere and is reported, not bounded.

Latency of a task = the time its ``succeeded`` transition was recorded by the driver minus the
time its attempt ended in the worker (both wall clocks of the same machine). The reference,
measured in the same run, is the same quantity for tasks that end with nothing queued behind
them (never held by design): what the driver's loop and the store cost anyway.

    python bench/latency.py [--tasks 3000] [--json PATH]
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from typing import Any

import common

import shoal

COMMAND_BOUND = 0.02  # worker.COMMAND_HOLD


def noop(i: int) -> int:
    return i


def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def latencies(run: shoal.Run, skip: set[int]) -> list[float]:
    with sqlite3.connect(run.dir / "shoal.db") as db:
        rows = db.execute(
            "SELECT a.task, a.ended, t.time FROM attempts a JOIN transitions t"
            " ON t.task = a.task AND t.attempt = a.attempt AND t.new = 'succeeded'"
            " WHERE a.outcome = 'succeeded'"
        ).fetchall()
    return [t - e for task, e, t in rows if task not in skip]


def measure(kind: str, n: int, timeout: float | None) -> dict[str, float]:
    fn = shoal.task(noop)
    slow = shoal.task(nap)
    cmd = shoal.command("true")
    with common.tempbase() as base:
        with shoal.Workflow(f"latency-{kind}") as wf:
            if kind == "python":
                tasks = [fn(i) for i in range(n)]
                long = slow(1.0)  # queued behind tiny ones: their outcomes must not wait
                tasks += [fn(i) for i in range(n)]
            else:
                tasks = [cmd() for _ in range(n)]
                long = None
        run = common.run_shoal(wf, base, timeout, cpus=2)
        skip = {long.id} if long is not None else set()
        lat = sorted(latencies(run, skip))
    return {
        "median_ms": 1000 * common.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "max_ms": 1000 * lat[-1],
    }


def alone(timeout: float | None) -> dict[str, float]:
    """The reference: tasks that end with nothing queued behind them (one at a time)."""
    fn = shoal.task(noop)
    with common.tempbase() as base:
        with shoal.Workflow("latency-alone") as wf:
            prev = fn(0)
            for i in range(1, 200):
                prev = fn(i).after(prev)
        run = common.run_shoal(wf, base, timeout, cpus=2, prefetch=0)
        lat = sorted(latencies(run, set()))
    return {
        "median_ms": 1000 * common.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "max_ms": 1000 * lat[-1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=3000)
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    runs = common.alternate(
        {
            "reference": lambda: alone(a.run_timeout),
            "python": lambda: measure("python", a.tasks, a.run_timeout),
            "command": lambda: measure("command", a.tasks, a.run_timeout),
        },
        a.repeats,
        not a.quiet,
    )
    m = {k: common.medians(v) for k, v in runs.items()}
    ref = m["reference"]
    rows: list[dict[str, Any]] = []
    for name, target in (
        ("python", "- (never held; the rest is the driver's loop under full load)"),
        ("command", f"<= {1000 * COMMAND_BOUND:g} ms held: p99 - reference p99"),
    ):
        r = m[name]
        held = r["p99_ms"] - ref["p99_ms"]
        rows.append(
            common.row(
                f"Outcome latency, {name} tasks queued on workers: p99 (median "
                f"{r['median_ms']:.2f} ms, max {r['max_ms']:.1f} ms)",
                r["p99_ms"],
                ref["p99_ms"],
                held,
                target,
                None if name == "python" else held <= 1000 * COMMAND_BOUND + 2.0,
                "ms",
            )
        )
    summary = (
        "Outcome latency (driver's record - attempt end), p99: "
        f"python {m['python']['p99_ms']:.2f} ms, command {m['command']['p99_ms']:.2f} ms, "
        f"reference (nothing queued) {ref['p99_ms']:.2f} ms; medians "
        f"{m['python']['median_ms']:.2f} / {m['command']['median_ms']:.2f} / "
        f"{ref['median_ms']:.2f} ms"
    )
    common.report("latency", summary, rows, {"runs": runs}, a)


if __name__ == "__main__":
    main()
