"""jobflow Flows through shoal against jobflow's own ``run_locally``, side by side.

Workloads (each alternated: jobflow, shoal, jobflow, shoal, ...; medians):

* ``noop``: ``--jobs`` (1,000) independent no-op jobs; jobs per second. Target: shoal >= 3x.
* ``sleep``: 40 jobs of 0.5 s each on 2 cores; wall time. Target: shoal >= 1.8x faster.
* ``chain``: a chain of ``--chain`` (200) jobs, each taking the previous one's output; the time
  from a job's end to its child's start (each job stamps both), median and p90, and the wall
  time. No target: the number jobflow-remote users report in minutes.
* ``atomate2``: atomate2's EOS flow with EMT Makers (examples/atomate2_eos.py: a relaxation,
  a strain job whose Response adds 6 fixed cells, the fit, a summary); wall time. Target:
  within 1 s of ``run_locally``'s. Not in the default ``--only``: it needs atomate2.

Both sides use ``jobflow.JobStore(MemoryStore())``; shoal's ``run_locally`` (``log=False``,
``cpus=2``) also keeps a run directory (in a temporary folder).

    python bench/jobflow_runs.py [--only noop,sleep,chain,atomate2] [--jobs 1000] [--chain 200]
                                 [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Any

import common

NOOP_TARGET = 3.0
SLEEP_TARGET = 1.8
A2_SLACK = 1.0  # seconds: a small atomate2 flow's wall time within this of run_locally's


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="noop,sleep,chain")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--chain", type=int, default=200)
    common.add_common_args(p)
    a = p.parse_args()
    sys.path.insert(0, str(common.ROOT / "bench"))
    import jobflow_jobs as jj  # the jobs: a module, so that shoal's workers import it by name
    from jobflow import Flow, JobStore
    from jobflow import run_locally as theirs
    from maggma.stores import MemoryStore

    from shoal.jobflow import run_locally as ours

    def store() -> Any:
        s = JobStore(MemoryStore())
        s.connect()
        return s

    def measure(make: Any, reduce: Any) -> dict[str, Any]:
        def side(fn: Any, **kw: Any) -> Any:
            def one() -> dict[str, float]:
                flow, jobs = make()
                s = store()
                t0 = time.perf_counter()
                fn(flow, store=s, log=False, **kw)
                wall = time.perf_counter() - t0
                return reduce(wall, s, jobs)

            return one

        with common.tempbase() as base:
            return common.alternate(
                {
                    "jobflow run_locally": side(theirs),
                    "shoal run_locally": side(ours, base=base, cpus=2, progress=False),
                },
                a.repeats,
                not a.quiet,
            )

    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    lines: list[str] = []
    only = a.only.split(",")
    if "noop" in only:

        def noops() -> tuple[Any, list[Any]]:
            jobs = [jj.noop(i) for i in range(a.jobs)]
            return Flow(jobs), jobs

        runs = measure(noops, lambda wall, s, jobs: {"rate": len(jobs) / wall})
        ref, got = (common.medians(runs[k])["rate"] for k in runs)
        rows.append(
            common.row(
                f"jobflow: {a.jobs} no-op jobs",
                got,
                ref,
                got / ref,
                f">= {NOOP_TARGET}x",
                got / ref >= NOOP_TARGET,
                "jobs/s",
            )
        )
        lines.append(f"noop {got:,.0f} vs {ref:,.0f} jobs/s ({got / ref:.2f}x)")
        data["noop"] = runs
    if "sleep" in only:

        def sleepers() -> tuple[Any, list[Any]]:
            jobs = [jj.nap(0.5) for _ in range(40)]
            return Flow(jobs), jobs

        runs = measure(sleepers, lambda wall, s, jobs: {"wall": wall})
        ref, got = (common.medians(runs[k])["wall"] for k in runs)
        rows.append(
            common.row(
                "jobflow: 40 jobs of 0.5 s on 2 cores (wall s)",
                got,
                ref,
                ref / got,
                f">= {SLEEP_TARGET}x faster",
                ref / got >= SLEEP_TARGET,
                "s",
            )
        )
        lines.append(f"sleep {got:.2f} s vs {ref:.2f} s ({ref / got:.2f}x faster)")
        data["sleep"] = runs
    if "chain" in only:

        def chain() -> tuple[Any, list[Any]]:
            jobs = [jj.stamp(None)]
            for _ in range(a.chain - 1):
                jobs.append(jj.stamp(jobs[-1].output))
            return Flow(jobs), jobs

        def gaps(wall: float, s: Any, jobs: list[Any]) -> dict[str, float]:
            out = [s.get_output(j.uuid) for j in jobs]
            g = sorted(b["start"] - p["end"] for p, b in itertools.pairwise(out))
            return {
                "median_ms": 1000 * statistics.median(g),
                "p90_ms": 1000 * g[int(0.9 * (len(g) - 1))],
                "wall": wall,
            }

        runs = measure(chain, gaps)
        ref, got = (common.medians(runs[k]) for k in runs)
        rows.append(
            common.row(
                f"jobflow: chain of {a.chain}, parent end to child start, median (ms)",
                got["median_ms"],
                ref["median_ms"],
                None,
                "-",
                None,
                "ms",
            )
        )
        rows.append(
            common.row(
                f"jobflow: chain of {a.chain}, parent end to child start, p90 (ms)",
                got["p90_ms"],
                ref["p90_ms"],
                None,
                "-",
                None,
                "ms",
            )
        )
        lines.append(
            f"chain median {got['median_ms']:.1f} ms (p90 {got['p90_ms']:.1f}) vs "
            f"{ref['median_ms']:.1f} ms (p90 {ref['p90_ms']:.1f})"
        )
        data["chain"] = runs
    if "atomate2" in only:
        sys.path.insert(0, str(common.ROOT / "examples"))
        import atomate2_eos as a2  # atomate2's EOS flow with EMT Makers (10 jobs)

        def eos() -> tuple[Any, list[Any]]:
            flow, summary = a2.build("Cu")
            return flow, [summary]

        def checked(wall: float, s: Any, jobs: list[Any]) -> dict[str, float]:
            a0 = s.get_output(jobs[0].uuid, load=True)["a0_fit"]
            assert abs(a0 - 3.59) < 0.01, a0  # the same physics on both sides
            return {"wall": wall}

        runs = measure(eos, checked)
        ref, got = (common.medians(runs[k])["wall"] for k in runs)
        rows.append(
            common.row(
                "atomate2: EOS flow of 10 EMT jobs (wall s)",
                got,
                ref,
                ref / got,
                f"<= run_locally + {A2_SLACK:g} s",
                got <= ref + A2_SLACK,
                "s",
            )
        )
        lines.append(f"atomate2 EOS {got:.2f} s vs {ref:.2f} s")
        data["atomate2"] = runs
    common.report("jobflow", "jobflow on shoal: " + "; ".join(lines), rows, data, a)


if __name__ == "__main__":
    main()
