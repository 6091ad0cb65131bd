"""W5: scheduling cost against the size of the backlog, and driver memory for a huge run.

(a) Core only (no processes, no store): a ``Scheduler`` on one ``Node.sized("n", 16)`` with
    ``Policy()`` (backfill, no prefetch). N independent ``TaskInfo`` are submitted (not timed),
    then K completions are timed: feed ``Succeeded`` for a running task, collect the
    ``Dispatch`` commands it returns, go on. N + K tasks are submitted so that the backlog never
    drops below N while timing. Reported: microseconds per completion for each N; N = 10k is the
    in-run reference (a flat cost means the 1M/10k ratio is near 1). Sizes alternate
    (10k, 100k, 1M, 10k, ...) and each run builds a fresh scheduler.
(b) End to end in a subprocess: build and ``wf.run(cpus=2)`` a workflow of N no-op tasks
    (100,000 by default, 1,000,000 with ``--full``); reported: the driver's peak RSS (VmHWM)
    and its growth over the bare interpreter per task (target <= 700 bytes at 1M), the time
    to build the workflow and the run's tasks/s. Reference: the peak RSS of the same child
    that imports shoal and builds nothing. A smaller run is held to the same bytes per task,
    which is conservative: its fixed costs (SQLite's page cache) weigh more per task.

    python bench/w5.py [--full] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import common

from shoal.core.commands import Dispatch
from shoal.core.machine import Policy, Scheduler
from shoal.core.resources import Node
from shoal.core.states import State
from shoal.core.stimuli import Submitted, Succeeded, TaskInfo

SIZES = (10_000, 100_000, 1_000_000)
COMPLETIONS = 20_000
TARGET_BYTES = 700  # per task over the bare interpreter, for the 1M run (issue 21)


# -- (a) core ---------------------------------------------------------------------------------
def core_cost(n: int, k: int) -> dict[str, float]:
    """Microseconds per completion with at least ``n`` tasks queued; builds a fresh scheduler."""
    sched = Scheduler([Node.sized("n", 16)], Policy())
    infos = tuple(TaskInfo(i) for i in range(n + k))
    t0 = time.perf_counter()
    out = sched.handle(Submitted(0.0, infos))
    build = time.perf_counter() - t0
    del infos
    running: deque[tuple[int, int]] = deque(
        (c.task, c.attempt) for c in out if isinstance(c, Dispatch)
    )
    del out
    gc.collect()
    now = 1.0
    t0 = time.perf_counter()
    for _ in range(k):
        task, attempt = running.popleft()
        now += 1e-4
        for c in sched.handle(Succeeded(now, task, attempt)):
            if type(c) is Dispatch:
                running.append((c.task, c.attempt))
    took = time.perf_counter() - t0
    queued = sched.counts[State.READY]  # the ready tasks: the backlog
    if queued < n - 16 or len(running) != 16:
        raise SystemExit(f"core run went wrong: {queued} queued, {len(running)} running")
    del sched
    gc.collect()
    return {"us_per_completion": took / k * 1e6, "submit_s": build}


# -- (b) end to end in a child ------------------------------------------------------------
def noop(i: int) -> int:
    return i


def child(n: int, base: str, timeout: float | None, options: dict[str, Any]) -> None:
    """Runs in the subprocess: build and run ``n`` no-op tasks, print JSON on stdout."""
    import shoal

    if n == 0:  # reference: the interpreter with shoal imported, nothing built
        import shoal.runtime.api

        print(json.dumps({"vm_hwm_mb": common.vm_hwm_mb()}))
        return
    t0 = time.perf_counter()
    fn = shoal.task(noop)
    with shoal.Workflow("w5") as wf:
        for i in range(n):
            fn(i)
    t1 = time.perf_counter()
    common.run_shoal(wf, Path(base), timeout, cpus=2, **options)
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "build_s": t1 - t0,
                "run_s": t2 - t1,
                "rate": n / (t2 - t1),
                "rate_e2e": n / (t2 - t0),
                "vm_hwm_mb": common.vm_hwm_mb(),
            }
        )
    )


def e2e(n: int, timeout: float | None, prefetch: int | None) -> dict[str, float]:
    with common.tempbase() as base:
        argv = [sys.executable, str(Path(__file__)), "--child", str(n), "--base", str(base)]
        if timeout:
            argv += ["--run-timeout", str(timeout)]
        if prefetch is not None:
            argv += ["--prefetch", str(prefetch)]
        backstop = timeout + 120 if timeout else None
        code, maxrss, text = common.child_peak_rss(argv, backstop)
    if code != 0:
        raise SystemExit(f"the {n}-task child failed (exit {code}):\n{text[-2000:]}")
    m: dict[str, float] = json.loads(text.strip().splitlines()[-1])
    m["wait4_maxrss_mb"] = maxrss
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="(b) with 1,000,000 tasks")
    p.add_argument("--tasks", type=int, help="(b) with this many tasks (overrides --full)")
    p.add_argument("--completions", type=int, default=COMPLETIONS, help="(a) K")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="(a) backlog sizes N")
    p.add_argument("--skip-core", action="store_true", help="skip (a)")
    p.add_argument("--skip-e2e", action="store_true", help="skip (b)")
    p.add_argument("--e2e-repeats", type=int, help="(b) runs (default: --repeats)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    if a.child is not None:
        child(a.child, a.base, a.run_timeout, common.shoal_options(a))
        return

    rows = []
    data: dict[str, object] = {}
    parts = []
    # (b) first: a child forked from a parent holding a 1M-task scheduler would start big.
    if not a.skip_e2e:
        n = a.tasks or (1_000_000 if a.full else 100_000)
        # --run-timeout is for 100,000 tasks; larger runs get proportionally longer.
        limit = a.run_timeout * max(1.0, n / 100_000) if a.run_timeout else None
        runs = common.alternate(
            {
                "reference": lambda: e2e(0, None, None),
                "shoal": lambda: e2e(n, limit, a.prefetch),
            },
            a.e2e_repeats or a.repeats,
            not a.quiet,
        )
        ref_mb = common.medians(runs["reference"])["vm_hwm_mb"]
        m = common.medians(runs["shoal"])
        peak = m["vm_hwm_mb"]
        per_task = (peak - ref_mb) * 1024 * 1024 / n
        # The target is for 1M tasks; a smaller run is projected to 1M linearly from the bare
        # interpreter (conservative: fixed costs count as if they grew with the run).
        projected = ref_mb + (peak - ref_mb) * 1_000_000 / n
        met = per_task <= TARGET_BYTES  # below 1M conservative: fixed costs count per task
        target = f"<= {TARGET_BYTES} B/task at 1M" + (
            "" if n == 1_000_000 else f" (projected {projected:,.0f} MB)"
        )
        rows.append(
            common.row(
                f"W5b driver peak RSS, {n:,} no-op tasks", peak, ref_mb, peak, target, met, "MB"
            )
        )
        rows.append(
            common.row(
                f"W5b build time, {n:,} tasks", m["build_s"], None, m["build_s"], "-", None, "s"
            )
        )
        rows.append(
            common.row(
                f"W5b run rate, {n:,} tasks", m["rate"], None, m["rate"], "-", None, "tasks/s"
            )
        )
        data["e2e"] = {
            "tasks": n,
            "runs": runs,
            "bytes_per_task": per_task,
            "projected_1m_mb": projected,
        }
        parts.append(
            f"e2e {n:,} tasks: driver peak {peak:,.0f} MB (bare {ref_mb:.0f} MB, "
            f"{per_task:,.0f} B/task against <= {TARGET_BYTES}: {'met' if met else 'NOT met'}; "
            f"1M projected {projected:,.0f} MB), build {m['build_s']:.1f} s, "
            f"run {m['rate']:,.0f} tasks/s"
        )
    if not a.skip_core:
        sizes = [int(s) for s in a.sizes.split(",")]
        k = a.completions
        runs = common.alternate(
            {f"N={n}": (lambda n=n: core_cost(n, k)) for n in sizes}, a.repeats, not a.quiet
        )
        cost = {n: common.medians(runs[f"N={n}"])["us_per_completion"] for n in sizes}
        ref = cost[sizes[0]]
        for n in sizes:
            ratio = cost[n] / ref
            target = "reference" if n == sizes[0] else "~1 (flat)"
            met = None if n == sizes[0] else ratio <= 1.5
            rows.append(
                common.row(
                    f"W5a core: us/completion, {n:,} queued",
                    cost[n],
                    ref,
                    ratio,
                    target,
                    met,
                    "us",
                )
            )
        data["core"] = {"completions": k, "us_per_completion": cost, "runs": runs}
        last = sizes[-1]
        parts.append(
            "core "
            + ", ".join(f"{n:,}: {cost[n]:.1f} us" for n in sizes)
            + f" per completion ({last:,}/{sizes[0]:,} = {cost[last] / ref:.2f}x)"
        )
    summary = "W5 " + "; ".join(parts)
    common.report("w5", summary, rows, data, a)


if __name__ == "__main__":
    main()
