"""W1 through the Dask backend against plain Dask ``client.map`` of the same function.

A real cluster on loopback: ``dask scheduler`` on 127.0.0.1 and two ``dask worker`` processes
(127.0.0.2 and 127.0.0.3, ``--threads`` each, default 1, with as many ``cores``), started by
this script. ``--tasks`` no-op Python tasks go through
``shoal.run(wf, backend=DaskBackend(...))`` (store, scheduler and all), alternated with
``client.gather(client.map(noop, range(n)))`` on the same cluster. Target: shoal >= 0.8x
the rate of plain Dask.

    python bench/w1dask.py [--tasks 5000] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common

import shoal

TARGET = 0.8
sys.path.insert(0, str(common.ROOT / "tests"))


def noop(i: int) -> int:
    return i


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads (and cores) per worker; above 1 a queued task waits in Dask on the one "
        "ahead of it (a dependency), not in the worker's own queue",
    )
    common.add_common_args(p)
    a = p.parse_args()
    from backends.dask_fixtures import start_cluster, stop_cluster  # tests/backends
    from shoal.backends.dask import DaskBackend

    n = a.tasks
    with tempfile.TemporaryDirectory(prefix="shoal-bench-dask-") as tmp:
        cluster = start_cluster(Path(tmp), workers=2, cores=a.threads)
        try:
            import distributed

            client = distributed.Client(scheduler_file=str(cluster.scheduler_file))
            client.wait_for_workers(2, timeout=60)

            def plain() -> dict[str, float]:
                t0 = time.perf_counter()
                total = sum(client.gather(client.map(noop, range(n), pure=False)))
                took = time.perf_counter() - t0
                assert total == n * (n - 1) // 2
                return {"rate": n / took}

            def through_shoal() -> dict[str, float]:
                fn = shoal.task(noop)
                with common.tempbase() as base:
                    t0 = time.perf_counter()
                    with shoal.Workflow("w1-dask") as wf:
                        tasks = [fn(i) for i in range(n)]
                    backend = DaskBackend(client=client, wait_for=2)
                    run = common.run_shoal(wf, base, a.run_timeout, backend=backend)
                    took = time.perf_counter() - t0
                    assert run.result(tasks[-1]) == n - 1
                return {"rate": n / took}

            runs = common.alternate(
                {"dask client.map": plain, "shoal, dask backend": through_shoal},
                a.repeats,
                not a.quiet,
            )
            client.close()
        finally:
            stop_cluster(cluster)
    ref = common.medians(runs["dask client.map"])["rate"]
    got = common.medians(runs["shoal, dask backend"])["rate"]
    ratio = got / ref
    met = ratio >= TARGET
    summary = (
        f"W1 {n} no-op tasks on 2 Dask workers: shoal with the Dask backend {got:,.0f} tasks/s, "
        f"plain client.map {ref:,.0f} tasks/s: {ratio:.2f}x (target >= {TARGET}x: "
        f"{'met' if met else 'NOT met'})"
    )
    rows = [
        common.row(
            f"W1 {n} no-op tasks through the Dask backend (2 workers, {a.threads} "
            f"thread{'s' if a.threads > 1 else ''} each)",
            got,
            ref,
            ratio,
            f">= {TARGET}x",
            met,
            "tasks/s",
        )
    ]
    common.report("dask", summary, rows, {"runs": runs}, a)


if __name__ == "__main__":
    main()
