"""The dashboard on a large run, and what watching a run costs its driver.

Part 1, a run of ``--tasks`` (default 1,000,000) no-op tasks (one in 997 fails; 8 names, 4
tags), made once (``--run DIR`` reuses one): the time of each question the run page and
the task table ask, through the functions the web server calls (``shoal.dashboard.data``,
``Reader.table``), cold (first) and warm (median of 5); and ``shoal report``. Beside them,
as the machine's yardstick measured in the same invocation: one full scan of the tasks table
(``SELECT count(*) ... WHERE state = 'failed'``).

Part 2: W1 (``--w1-tasks`` no-op tasks, cpus=2) alone and with a dashboard watching it (a
``shoal dashboard`` process, and a client that opens the run page as the browser does: the
run, its charts, and the live-update stream held open), alternated ``--repeats`` times.

    python bench/dashboard.py [--tasks 1000000] [--run DIR] [--w1-tasks 100000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import common

import shoal

PAGE_MS = 200  # target: the run page's questions
TABLE_MS = 100  # target: one page of the task table
W1_COST = 0.03  # target: W1 with a dashboard watching within 3% of without


def work(i: int) -> int:
    if i % 997 == 0:
        raise ValueError(f"bad input {i}")
    return i


def make_run(n: int, base: Path) -> Path:
    fns = [
        shoal.task(work, name=f"relax-{k}", tags=[("md", "dft", "ml", "pf")[k % 4]])
        for k in range(8)
    ]
    with shoal.Workflow("big") as wf:
        for i in range(n):
            fns[i % 8](i)
    run = wf.run(cpus=2, base=base, progress=False)
    return Path(run.dir)


def _ms(fn: Any, times: int = 5) -> tuple[float, float]:
    """(cold, warm median) milliseconds of ``fn``."""
    t0 = time.perf_counter()
    fn()
    cold = (time.perf_counter() - t0) * 1000
    warm = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        warm.append((time.perf_counter() - t0) * 1000)
    return cold, statistics.median(warm)


def queries(run: Path) -> dict[str, tuple[float, float]]:
    from shoal.dashboard import data
    from shoal.store.queries import Reader

    cat = data.Catalog(run.parent)
    charts = data.Charts()
    st = cat.summary(run)
    mid = st["total"] // 2
    r = Reader(run)
    out = {
        "yardstick: one scan of the tasks table": _ms(
            lambda: r.conn.execute("SELECT count(*) FROM tasks WHERE state='failed'").fetchone()
        ),
        "run page: summary, failures, nodes, rules": _ms(lambda: data.run_page(cat, run)),
        "run page: charts (cold = read the run)": _ms(
            lambda: charts.get(run, st["life"], st["ended"])
        ),
        "runs page (one run)": _ms(lambda: cat.runs()),
        "task table: first page": _ms(lambda: r.table(limit=50, count=False)),
        "task table: page at the middle": _ms(lambda: r.table(limit=50, offset=mid, count=False)),
        "task table: failed": _ms(lambda: r.table(("failed",), limit=50, count=False)),
        "task table: tag md, page 3": _ms(
            lambda: r.table(tag="md", limit=50, offset=100, count=False)
        ),
        "task table: name glob relax-3": _ms(
            lambda: r.table(name="relax-3", limit=50, count=False)
        ),
        "task table: text in reason": _ms(
            lambda: r.table(text="bad input 9", limit=50, count=False)
        ),
        "task table: sorted by run time": _ms(
            lambda: r.table(sort="-runtime", limit=50, count=False), times=2
        ),
        "task table: count of a text filter": _ms(
            lambda: r.table(text="bad input", limit=1), times=2
        ),
        "task page (story, attempts, dependents)": _ms(lambda: data.task_page(run, mid), times=2),
    }
    r.close()
    return out


def report_time(run: Path, out: Path) -> float:
    from shoal.report.build import report

    t0 = time.perf_counter()
    report(run, out / "report.html")
    return time.perf_counter() - t0


class Watcher:
    """A ``shoal dashboard`` over ``base`` and a client that, as soon as a run appears,
    opens its run page as a browser does and keeps its live updates open."""

    def __init__(self, base: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "dashboard", str(base), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("shoal dashboard did not start")
            found = re.search(r"open: (http://[\d.]+:\d+)/", line)
            if found:
                self.url = found[1]
                break
        self.stop = threading.Event()
        self.updates = 0
        self.thread = threading.Thread(target=self._client, daemon=True)
        self.thread.start()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as resp:
            return json.loads(resp.read())

    def _client(self) -> None:
        key = None
        while key is None and not self.stop.is_set():
            runs = self._get("/api/runs")["runs"]
            key = runs[0]["key"] if runs else None
            time.sleep(1.0)  # as the runs page's live updates would tell a browser
        if key is None:
            return
        self._get(f"/api/run?run={key}")
        self._get(f"/api/charts?run={key}")
        with urllib.request.urlopen(f"{self.url}/api/events?run={key}", timeout=60) as resp:
            last = time.monotonic()
            while not self.stop.is_set():
                line = resp.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    self.updates += 1
                    data = json.loads(line[5:])
                    if data.get("state") not in (None, "running"):
                        return
                if time.monotonic() - last > 10:  # the page's slow refresh
                    last = time.monotonic()
                    self._get(f"/api/run?run={key}")
                    self._get(f"/api/charts?run={key}")

    def close(self) -> None:
        self.stop.set()
        self.proc.terminate()
        self.proc.wait(30)


def w1(n: int, watched: bool) -> dict[str, float]:
    with common.tempbase() as base:
        watcher = Watcher(base) if watched else None
        try:
            t0 = time.perf_counter()
            fn = shoal.task(work)
            with shoal.Workflow("w1") as wf:
                for i in range(1, n + 1):  # no failures here
                    fn(i)
            wf.run(cpus=2, base=base, progress=False)
            took = time.perf_counter() - t0
        finally:
            if watcher is not None:
                watcher.close()
        out = {"rate": n / took}
        if watcher is not None:
            out["updates"] = float(watcher.updates)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--run", type=Path, help="a run directory made before (part 1)")
    p.add_argument("--w1-tasks", type=int, default=100_000)
    p.add_argument("--skip-w1", action="store_true")
    p.add_argument("--skip-report", action="store_true")
    p.add_argument("--skip-queries", action="store_true", help="part 2 only")
    common.add_common_args(p)
    a = p.parse_args()
    common.cleanup_on_sigterm()
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    summary = f"dashboard on {a.tasks:,} tasks"
    with common.tempbase() as base:
        if a.skip_queries:
            a.skip_report = True
        run = a.run or (None if a.skip_queries else make_run(a.tasks, base))
        timings = queries(run) if run else {}
        data["queries_ms"] = timings
        yard = timings["yardstick: one scan of the tasks table"][1] if timings else 0.0
        for name, (cold, warm) in timings.items():
            target = PAGE_MS if name.startswith(("run page", "runs page")) else TABLE_MS
            if name.startswith(("task table", "run page", "runs page")):
                rows.append(
                    common.row(
                        f"{name} (warm; cold {cold:.0f} ms)",
                        warm,
                        yard,
                        warm / yard,
                        f"<= {target} ms",
                        warm <= target,
                        "ms",
                    )
                )
            print(f"  {name}: cold {cold:.1f} ms, warm {warm:.1f} ms", file=sys.stderr)
        if run and not a.skip_report:
            secs = report_time(run, base)
            data["report_s"] = secs
            rows.append(common.row("shoal report", secs, None, secs, "< 60 s", secs < 60, "s"))
            print(f"  shoal report: {secs:.1f} s", file=sys.stderr)
    if timings:
        page = timings["run page: summary, failures, nodes, rules"][1]
        summary += f": run page {page:.0f} ms"
    if not a.skip_w1:
        runs = common.alternate(
            {"alone": lambda: w1(a.w1_tasks, False), "watched": lambda: w1(a.w1_tasks, True)},
            a.repeats,
            not a.quiet,
        )
        alone = common.median([r["rate"] for r in runs["alone"]])
        watched = common.median([r["rate"] for r in runs["watched"]])
        cost = 1 - watched / alone
        data["w1"] = runs
        rows.append(
            common.row(
                f"W1 {a.w1_tasks} tasks, a dashboard watching",
                watched,
                alone,
                watched / alone,
                f">= {1 - W1_COST:.2f}",
                cost <= W1_COST,
                "tasks/s",
            )
        )
        summary += f"; W1 watched {watched:,.0f} vs alone {alone:,.0f} tasks/s ({cost:+.1%} cost)"
    common.report("dashboard", summary, rows, data, a)


if __name__ == "__main__":
    main()
