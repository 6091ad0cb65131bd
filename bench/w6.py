"""W6: packing heterogeneous work (GPU tasks beside CPU tasks) through the pure core.

Workloads on a node of 16 cores and 4 GPUs, and on 4 such nodes: half GPU tasks (1 or 2 GPUs
with 1-4 cores each), half CPU tasks (1-8 cores), durations lognormal (median 1, sigma 0.8),
both drawn from random.Random(seed). Two submission orders that are not friendly: ``cpu-first``
(every CPU task, then every GPU task) and ``shuffled``. The core (``Scheduler``) is driven on
a simulated clock with no overhead: each ``Dispatch`` ends after its task's duration, each
end is fed back as ``Succeeded``; nothing else runs, so thousands of workloads take seconds.

Efficiency = the lower bound on any schedule's makespan,
``max(core-seconds / cores, GPU-seconds / GPUs, longest task)``, over the simulated makespan.
Reported over ``--seeds`` workloads per shape and order: the median and the 10th percentile,
without estimates and with rough ones (each duration times a lognormal error of sigma 0.5),
for the policy of today (``Policy()``) and for submission order with no core at all
(``greedy``: whenever resources free up, the first tasks in order that fit start), the
reference every run is measured beside.

``--real K`` also runs the first K workloads of one node (cpu-first) through the real local
backend (``wf.run(cpus=16, gpus=4)``, pretended GPUs, Python tasks that sleep their duration
times ``--scale`` seconds), beside the simulated core on the same workload: efficiency from
first start to last end (the store's attempts) and end to end (``wf.run``'s wall time).

    python bench/w6.py [--seeds 20] [--tasks 400] [--real 3 --scale 0.02] [--json PATH]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import common

import shoal
from shoal.core.commands import Dispatch
from shoal.core.machine import Policy, Scheduler
from shoal.core.resources import Node
from shoal.core.stimuli import Submitted, Succeeded, TaskInfo
from shoal.spec.request import Request
from shoal.store.queries import Reader

CORES, GPUS = 16, 4
ERROR = 0.5  # sigma of the lognormal error of the estimates
TARGETS = {"none": 0.93, "estimates": 0.97}  # median efficiency of the bound (issue 21)


@dataclass(frozen=True)
class Job:
    duration: float
    cpus: int
    gpus: int


def workload(n: int, seed: int, order: str) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        d = rng.lognormvariate(0.0, 0.8)
        if i % 2:
            jobs.append(Job(d, rng.randint(1, 4), rng.choice((1, 2))))
        else:
            jobs.append(Job(d, rng.randint(1, 8), 0))
    if order == "cpu-first":
        jobs.sort(key=lambda j: j.gpus > 0)
    else:
        rng.shuffle(jobs)
    return jobs


def bound(jobs: list[Job], nodes: int) -> float:
    cores = sum(j.duration * j.cpus for j in jobs) / (CORES * nodes)
    gpus = sum(j.duration * j.gpus for j in jobs) / (GPUS * nodes)
    return max(cores, gpus, max(j.duration for j in jobs))


def guesses(jobs: list[Job], seed: int) -> list[float]:
    rng = random.Random(seed + 10_000)
    return [j.duration * rng.lognormvariate(0.0, ERROR) for j in jobs]


def core(jobs: list[Job], nodes: int, estimates: list[float] | None, policy: Policy) -> float:
    """The makespan the core reaches on a simulated clock with no overhead."""
    sched = Scheduler([Node.sized(f"n{i}", CORES, GPUS) for i in range(nodes)], policy)
    infos = tuple(
        TaskInfo(i, request=Request(j.cpus, j.gpus), estimate=estimates[i] if estimates else 0.0)
        for i, j in enumerate(jobs)
    )
    ends: list[tuple[float, int, int]] = []
    now = 0.0

    def start(commands: list[Any]) -> None:
        for c in commands:
            if type(c) is Dispatch:
                heapq.heappush(ends, (now + jobs[c.task].duration, c.task, c.attempt))

    start(sched.handle(Submitted(now, infos)))
    while ends:
        now, task, attempt = heapq.heappop(ends)
        batch = [Succeeded(now, task, attempt)]
        while ends and ends[0][0] <= now:  # ends at the same instant arrive together
            _, t, a = heapq.heappop(ends)
            batch.append(Succeeded(now, t, a))
        start(sched.handle(*batch))
    if not sched.done:
        raise SystemExit(f"the core left work undone: {dict(sched.counts)}")
    return now


def greedy(jobs: list[Job], nodes: int) -> float:
    """Submission order with no core: whenever resources free up, the first tasks in order
    that fit on some node start there (smaller ones skip a bigger one)."""
    free = [[CORES, GPUS] for _ in range(nodes)]
    todo = list(range(len(jobs)))
    ends: list[tuple[float, int, int]] = []
    now = 0.0
    while todo or ends:
        keep = []
        for i in todo:
            j = jobs[i]
            node = next((k for k, f in enumerate(free) if f[0] >= j.cpus and f[1] >= j.gpus), None)
            if node is None:
                keep.append(i)
                continue
            free[node][0] -= j.cpus
            free[node][1] -= j.gpus
            heapq.heappush(ends, (now + j.duration, i, node))
        todo = keep
        now, i, node = heapq.heappop(ends)
        free[node][0] += jobs[i].cpus
        free[node][1] += jobs[i].gpus
        while ends and ends[0][0] <= now:
            _, i, node = heapq.heappop(ends)
            free[node][0] += jobs[i].cpus
            free[node][1] += jobs[i].gpus
    return now


def summary(values: list[float]) -> dict[str, float]:
    ranked = sorted(values)
    return {
        "median": statistics.median(ranked),
        "p10": ranked[len(ranked) // 10],
        "min": ranked[0],
    }


def measure(seeds: int, tasks: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for nodes in (1, 4):
        for order in ("cpu-first", "shuffled"):
            rows: dict[str, list[float]] = {"greedy": [], "none": [], "estimates": []}
            for seed in range(seeds):
                jobs = workload(tasks * nodes, seed, order)
                low = bound(jobs, nodes)
                rows["greedy"].append(low / greedy(jobs, nodes))
                rows["none"].append(low / core(jobs, nodes, None, Policy()))
                rows["estimates"].append(low / core(jobs, nodes, guesses(jobs, seed), Policy()))
            out[f"{nodes} node(s), {order}"] = {k: summary(v) for k, v in rows.items()}
    return out


def nap(d: float) -> float:
    time.sleep(d)
    return d


def real(
    jobs: list[Job], scale: float, estimates: list[float] | None, backend: str = "local"
) -> dict[str, float]:
    """One node's workload through the local backend: efficiency (first start to last end,
    and end to end) against the bound, beside the simulated core's."""
    low = bound(jobs, 1) * scale
    sim = bound(jobs, 1) / core(jobs, 1, estimates, Policy())
    with common.tempbase() as base:
        fn = shoal.task(nap)
        with shoal.Workflow("w6") as wf:
            for i, j in enumerate(jobs):
                guess = estimates[i] * scale if estimates else None
                fn.options(cpus=j.cpus, gpus=j.gpus, estimate=guess)(j.duration * scale)
        t0 = time.perf_counter()
        size: dict[str, Any] = {"cpus": CORES, "gpus": GPUS} if backend == "local" else {}
        run = common.run_shoal(wf, base, None, backend=backend, **size)
        wall = time.perf_counter() - t0
        with Reader(run.dir) as r:
            first, last = r.conn.execute("SELECT min(started), max(ended) FROM attempts").fetchone()
    return {"simulated": sim, "span": low / (last - first), "wall": low / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--tasks", type=int, default=400, help="tasks per node")
    p.add_argument("--json", help="write the numbers here too")
    p.add_argument("--real", type=int, default=0, help="workloads run by the local backend")
    p.add_argument("--scale", type=float, default=0.02, help="seconds per unit of duration")
    p.add_argument(
        "--backend", default="local", help="local, or slurm (inside an allocation of a node)"
    )
    a = p.parse_args()
    if a.real:
        for seed in range(a.real):
            jobs = workload(a.tasks, seed, "cpu-first")
            for name, est in (("none", None), ("estimates", guesses(jobs, seed))):
                r = real(jobs, a.scale, est, a.backend)
                print(
                    f"W6 real, seed {seed}, {name}: simulated core {r['simulated']:.3f}, "
                    f"{a.backend} backend {r['span']:.3f} (first start to last end), "
                    f"{r['wall']:.3f} end to end"
                )
        return
    t0 = time.perf_counter()
    res = measure(a.seeds, a.tasks)
    took = time.perf_counter() - t0
    print(f"W6: {a.seeds} workloads per shape, {a.tasks} tasks per node; {took:.1f} s")
    print(f"{'shape':<24} {'policy':<11} {'median':>7} {'p10':>7} {'min':>7}  target")
    for shape, rows in res.items():
        for name, s in rows.items():
            target = TARGETS.get(name)
            met = target is not None and s["median"] >= target
            mark = "" if target is None else f"  {target} {'ok' if met else 'MISS'}"
            print(
                f"{shape:<24} {name:<11} {s['median']:>7.3f} {s['p10']:>7.3f} {s['min']:>7.3f}"
                f"{mark}"
            )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"seeds": a.seeds, "tasks": a.tasks, "results": res}, fh, indent=2)


if __name__ == "__main__":
    main()
