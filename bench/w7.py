"""W7: a thousand nodes through the pure core: cost per completion and packing at scale.

A simulated allocation of N nodes of 64 cores and 4 GPUs (default 1,000) and the 1-node
reference, each with the W6 mix scaled to its size (``--per-node`` tasks per node: half GPU
tasks of 1-2 GPUs and 1-4 cores, half CPU tasks of 1-8 cores, lognormal durations) and rough
estimates (sigma 0.5). The core (``Scheduler``) runs on a simulated clock with no overhead;
the wall time spent in ``Scheduler.handle`` per completion is the cost of a decision.

Targets (issue 21): the cost per completion at N nodes at most 2x that at 1 node; packing
at least 0.95 of the lower bound with estimates.

``--driver N`` runs N tasks of the same mix through the real driver (``wf.run``, its store
included) with a backend whose tasks complete at once (no processes): the most completions
per second the driver keeps up with, at 1 node and at ``--nodes``.

    python bench/w7.py [--nodes 1000] [--per-node 1000] [--driver 100000] [--json PATH]
"""

from __future__ import annotations

import argparse
import heapq
import json
import pickle
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

import shoal
from shoal.backends.base import Backend, Job
from shoal.core.commands import Dispatch
from shoal.core.events import Outcome
from shoal.core.machine import Policy, Scheduler
from shoal.core.resources import Node
from shoal.core.stimuli import Submitted, Succeeded, TaskInfo
from shoal.spec.request import Request

CORES, GPUS = 64, 4


def workload(n: int, seed: int) -> list[tuple[float, int, int, float]]:
    """(duration, cpus, gpus, estimate) of ``n`` tasks, shuffled."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d = rng.lognormvariate(0.0, 0.8)
        cpus, gpus = (rng.randint(1, 4), rng.choice((1, 2))) if i % 2 else (rng.randint(1, 8), 0)
        out.append((d, cpus, gpus, d * rng.lognormvariate(0.0, 0.5)))
    rng.shuffle(out)
    return out


def simulate(nodes: int, tasks: list[tuple[float, int, int, float]]) -> dict[str, float]:
    sched = Scheduler([Node.sized(f"n{i}", CORES, GPUS) for i in range(nodes)], Policy())
    infos = tuple(
        TaskInfo(i, request=Request(c, g), estimate=e) for i, (_, c, g, e) in enumerate(tasks)
    )
    ends: list[tuple[float, int, int]] = []
    spent = 0.0

    def handle(*events: Any) -> None:
        nonlocal spent
        t0 = time.perf_counter()
        out = sched.handle(*events)
        spent += time.perf_counter() - t0
        now = events[0].now
        for c in out:
            if type(c) is Dispatch:
                heapq.heappush(ends, (now + tasks[c.task][0], c.task, c.attempt))

    handle(Submitted(0.0, infos))
    submit_s = spent
    spent = 0.0
    now = 0.0
    while ends:
        now, task, attempt = heapq.heappop(ends)
        batch = [Succeeded(now, task, attempt)]
        while ends and ends[0][0] <= now:
            _, t, a = heapq.heappop(ends)
            batch.append(Succeeded(now, t, a))
        handle(*batch)
    if not sched.done:
        raise SystemExit(f"the core left work undone: {dict(sched.counts)}")
    cores = sum(d * c for d, c, _, _ in tasks) / (CORES * nodes)
    gpus = sum(d * g for d, _, g, _ in tasks) / (GPUS * nodes)
    low = max(cores, gpus, max(d for d, _, _, _ in tasks))
    return {
        "us_per_completion": spent / len(tasks) * 1e6,
        "submit_s": submit_s,
        "efficiency": low / now,
        "completions_per_s": len(tasks) / spent,
    }


class Instant(Backend):
    """A backend of ``count`` pretended nodes whose tasks succeed the moment they are
    submitted: what is left is the driver's own cost (scheduling, store, outcomes)."""

    name = "instant"
    capabilities = frozenset({"python"})

    def __init__(self, count: int) -> None:
        self._nodes = [Node.sized(f"n{i}", CORES, GPUS) for i in range(count)]
        self._done: list[Outcome] = []
        self._none = pickle.dumps(None)
        self.began = self.ended = 0.0

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def start(self, rundir: Path) -> None:
        pass

    def define(self, function: int, payload: bytes) -> None:
        self.began = time.perf_counter()  # the driver defines the functions, then loops

    def submit(self, jobs: Sequence[Job]) -> None:
        now = time.time()
        self._done.extend(
            Outcome(j.task, j.attempt, True, now, now, result=self._none) for j in jobs
        )

    def cancel(self, task: int, attempt: int) -> None:
        pass

    def poll(self, timeout: float) -> list[Outcome]:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        self.ended = time.perf_counter()


def noop() -> None:
    return None


def driver(nodes: int, n: int) -> dict[str, float]:
    """``n`` tasks of the mix through ``wf.run`` on :class:`Instant`: completions per second,
    over the whole run (storing the plan, starting, the loop) and over the driver's loop alone
    (from the backend's last ``define`` to its ``close``: submitting the tasks to the core,
    the loop, and recording the end)."""
    fn = shoal.task(noop)
    with shoal.Workflow("w7") as wf:
        for _, cpus, gpus, estimate in workload(n, 2):
            fn.options(cpus=cpus, gpus=gpus, estimate=estimate)()
    with common.tempbase() as base:
        t0 = time.perf_counter()
        backend = Instant(nodes)
        common.run_shoal(wf, base, None, backend=backend, progress=False)
        took = time.perf_counter() - t0
    loop = backend.ended - backend.began
    return {
        "completions_per_s": n / took,
        "wall_s": took,
        "loop_s": loop,
        "loop_completions_per_s": n / loop,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--per-node", type=int, default=1000, help="tasks per node")
    p.add_argument("--json", help="write the numbers here too")
    p.add_argument("--driver", type=int, default=0, help="tasks through the real driver")
    a = p.parse_args()
    if a.driver:
        for nodes in (1, a.nodes, 1):
            r = driver(nodes, a.driver)
            print(
                f"W7 driver, {nodes} node(s), {a.driver:,} tasks: "
                f"{r['loop_completions_per_s']:,.0f} completions/s in the loop "
                f"({r['loop_s']:.2f} s), {r['completions_per_s']:,.0f}/s over the whole run "
                f"({r['wall_s']:.2f} s, storing the plan and starting included)"
            )
        return
    res = {}
    for nodes in (1, a.nodes, 1):  # the reference before and after
        key = f"{nodes} node(s)" + (" again" if nodes == 1 and res else "")
        res[key] = simulate(nodes, workload(a.per_node * nodes, 1))
        r = res[key]
        print(
            f"W7 {key}: {r['us_per_completion']:.1f} us per completion "
            f"({r['completions_per_s']:,.0f}/s), submit {r['submit_s']:.2f} s, "
            f"packing {r['efficiency']:.3f} of the bound"
        )
    ref = min(res["1 node(s)"]["us_per_completion"], res["1 node(s) again"]["us_per_completion"])
    big = res[f"{a.nodes} node(s)"]["us_per_completion"]
    print(f"W7 cost at {a.nodes} nodes / 1 node: {big / ref:.2f} (target <= 2)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
