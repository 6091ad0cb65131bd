"""Slurm: W3 through the Slurm backend beside the local backend, and launch rates.

Runs inside an allocation of the pretend 16-CPU node (it starts itself under ``salloc -N1
-n16`` when it is not in one). Measured in the same invocation, alternated:

* **W3** (400 tasks of 1, 2 or 4 cores sleeping d s, d lognormal with median 0.1 s; see
  ``bench/w3.py``): efficiency = lower bound / (last end - first start), through
  (a) the local backend with a pretend 16-core node (the reference), (b) the Slurm backend with
  command tasks ``sleep d`` as job steps, and (c) the Slurm backend with Python tasks on its
  persistent workers (``python="workers"``: one Dask worker per node started as an
  ``srun --overlap`` step). Target: >= 0.9.
* **Launch rates** of ``--launch`` no-op tasks: Python tasks as steps (an interpreter each),
  commands (``true``) as steps, and Python tasks on the persistent workers.

    salloc -N1 -n16 python bench/slurm.py [--tasks 400] [--launch 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import common
import w3

import shoal
from shoal.store.queries import Reader

TARGET = 0.9


def noop() -> int:
    return 0


def efficiency(run: Any, lower: float) -> float:
    with Reader(run.dir) as r:
        starts, ends = [], []
        for t in r.tasks():
            for a in r.attempts(t.id):
                if a["started"] and a["ended"]:
                    starts.append(a["started"])
                    ends.append(a["ended"])
    return lower / (max(ends) - min(starts))


def w3_run(kind: str, tasks: list[tuple[float, int]], timeout: float | None) -> dict[str, float]:
    from shoal.backends.local import LocalBackend
    from shoal.backends.slurm import SlurmBackend

    lower = w3.bound(tasks)
    with common.tempbase() as base:
        if kind == "steps":
            nap = shoal.command("sleep {d}")
            with shoal.Workflow("w3-steps") as wf:
                for d, c in tasks:
                    nap.options(cpus=c)(d=f"{d:.4f}")
            backend: Any = SlurmBackend(python="steps")
        else:
            fn = shoal.task(w3.nap)
            with shoal.Workflow(f"w3-{kind}") as wf:
                for d, c in tasks:
                    fn.options(cpus=c)(d)
            if kind == "local":
                backend = LocalBackend(cpus=w3.CORES, pin="fold")
            else:  # the Slurm backend with its Python tasks on persistent workers
                backend = SlurmBackend(python="workers", host="127.0.0.1")
        run = common.run_shoal(wf, base, timeout, backend=backend)
        return {"efficiency": efficiency(run, lower)}


def launch(kind: str, n: int, timeout: float | None) -> dict[str, float]:
    from shoal.backends.slurm import SlurmBackend
    from shoal.backends.slurm.dask_workers import in_allocation

    with common.tempbase() as base:
        if kind == "command steps":
            true = shoal.command("true")
            with shoal.Workflow("launch") as wf:
                for _ in range(n):
                    true()
        else:
            fn = shoal.task(noop)
            with shoal.Workflow("launch") as wf:
                for _ in range(n):
                    fn()
        if kind == "persistent workers":
            t_start = time.perf_counter()
            backend: Any = in_allocation(host="127.0.0.1")
            ready = time.perf_counter() - t_start
        else:
            backend, ready = SlurmBackend(python="steps"), 0.0
        t0 = time.perf_counter()
        common.run_shoal(wf, base, timeout, backend=backend)
        took = time.perf_counter() - t0
    return {"rate": n / took, "startup_s": ready}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--launch", type=int, default=200)
    common.add_common_args(p)
    a = p.parse_args()
    if not os.environ.get("SLURM_JOB_ID"):
        if shutil.which("salloc") is None:
            raise SystemExit("bench/slurm.py needs Slurm (tests/infra/slurm-local.sh up)")
        argv = ["salloc", "-N1", "-n16", "-J", "shoal-bench", sys.executable, *sys.argv]
        raise SystemExit(subprocess.call(argv))
    tasks = w3.workload(a.tasks)
    eff = common.alternate(
        {
            "local": lambda: w3_run("local", tasks, a.run_timeout),
            "slurm steps": lambda: w3_run("steps", tasks, a.run_timeout),
            "slurm workers": lambda: w3_run("workers", tasks, a.run_timeout),
        },
        a.repeats,
        not a.quiet,
    )
    rates = common.alternate(
        {
            "python steps": lambda: launch("python steps", a.launch, a.run_timeout),
            "command steps": lambda: launch("command steps", a.launch, a.run_timeout),
            "persistent workers": lambda: launch("persistent workers", a.launch, a.run_timeout),
        },
        a.repeats,
        not a.quiet,
    )
    e = {k: common.medians(v)["efficiency"] for k, v in eff.items()}
    r = {k: common.medians(v)["rate"] for k, v in rates.items()}
    met_steps = e["slurm steps"] >= TARGET
    met_workers = e["slurm workers"] >= TARGET
    summary = (
        f"W3 {a.tasks} tasks on the pretend 16-CPU node: efficiency local {e['local']:.3f}, "
        f"Slurm steps {e['slurm steps']:.3f} ({'met' if met_steps else 'NOT met'}), Slurm "
        f"persistent workers {e['slurm workers']:.3f} ({'met' if met_workers else 'NOT met'}) "
        f"(target >= {TARGET}). Launch rates: Python tasks as steps {r['python steps']:.1f}/s, "
        f"commands as steps {r['command steps']:.1f}/s, Python tasks on persistent workers "
        f"{r['persistent workers']:.1f}/s"
    )
    rows = [
        common.row(
            f"W3 {a.tasks} tasks, Slurm backend, commands as steps",
            e["slurm steps"],
            e["local"],
            e["slurm steps"],
            f">= {TARGET}",
            met_steps,
            "efficiency",
        ),
        common.row(
            f"W3 {a.tasks} tasks, Slurm allocation, persistent Dask workers",
            e["slurm workers"],
            e["local"],
            e["slurm workers"],
            f">= {TARGET}",
            met_workers,
            "efficiency",
        ),
        common.row(
            f"launch {a.launch} no-op Python tasks as steps",
            r["python steps"],
            r["persistent workers"],
            r["python steps"] / r["persistent workers"],
            "-",
            None,
            "tasks/s",
        ),
        common.row(
            f"launch {a.launch} commands (true) as steps",
            r["command steps"],
            r["persistent workers"],
            r["command steps"] / r["persistent workers"],
            "-",
            None,
            "tasks/s",
        ),
    ]
    common.report("slurm", summary, rows, {"efficiency": eff, "launch": rates}, a)


if __name__ == "__main__":
    main()
