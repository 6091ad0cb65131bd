"""Expanding and validating a config file with a 1,000,000-task product sweep.

The file (written by this script) has one group, ``./sim --a {a} --b {b} --c {c}``, swept by
product over ``linspace(0, 1, 100)``, ``range(100)`` and ``logspace(-3, 0, 100)``. Measured
in a fresh child process each: ``shoal.config.load`` (read, validate, check resources) plus
``ensemble.workflow()`` (every task built: a shoal Task with its options, command template and
values), and ``ensemble.plan()`` for ``shoal plan``.

Reference, alternated with it in the same invocation: plain Python building the same million
rows (``itertools.product``), one dict and one formatted command line per task, which is about
the least any tool can do. Targets: shoal <= 10 s and <= 1 GB peak memory.

    python bench/config.py [--size 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common

TIME_TARGET = 10.0
MEMORY_TARGET = 1024.0  # MB

CONFIG = """\
name: million
resources: {{cpus: 64}}
groups:
  screen:
    command: "./sim --a {{a}} --b {{b}} --c {{c}}"
    sweep:
      a: "linspace(0, 1, {n})"
      b: "range({n})"
      c: "logspace(-3, 0, {n})"
    cpus: 1
    timeout: 600
    duration: 30
"""


SWEPT = (
    CONFIG.replace('a: "linspace(0, 1, {n})"', 'a: "range(1, {n} + 1)"')
    .replace("cpus: 1", 'cpus: "{{a}}"')
    .replace("cpus: 64", "cpus: 128")
)


def child_shoal(path: str) -> None:
    from shoal.config import load

    t0 = time.perf_counter()
    ens = load(path)
    loaded = time.perf_counter()
    wf = ens.workflow()
    built = time.perf_counter()
    plan = ens.plan()
    planned = time.perf_counter()
    out = {
        "seconds": built - t0,
        "load": loaded - t0,
        "build": built - loaded,
        "plan": planned - built,
        "tasks": len(wf),
        "planned": plan["tasks"],
        "peak_mb": common.vm_hwm_mb() or 0.0,
    }
    print(json.dumps(out))


def child_reference(n: int) -> None:
    import itertools

    t0 = time.perf_counter()
    a = [i / (n - 1) for i in range(n)]
    b = list(range(n))
    c = [10 ** (-3 + 3 * i / (n - 1)) for i in range(n)]
    rows = []
    lines = []
    for x, y, z in itertools.product(a, b, c):
        row = {"a": x, "b": y, "c": z}
        rows.append(row)
        lines.append("./sim --a {a} --b {b} --c {c}".format(**row))
    took = time.perf_counter() - t0
    print(json.dumps({"seconds": took, "tasks": len(rows), "peak_mb": common.vm_hwm_mb() or 0.0}))


def measure(argv: list[str]) -> dict[str, float]:
    code, _, text = common.child_peak_rss([sys.executable, __file__, *argv], timeout=300)
    if code != 0:
        raise SystemExit(f"bench child {argv} failed with exit code {code}:\n{text}")
    data: dict[str, float] = json.loads(text.strip().splitlines()[-1])
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=100, help="values per parameter (tasks: size³)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    common.add_common_args(p)
    a = p.parse_args()
    if a.child:
        kind, arg = a.child
        child_shoal(arg) if kind == "shoal" else child_reference(int(arg))
        return
    with tempfile.TemporaryDirectory(prefix="shoal-bench-config-") as tmp:
        path = Path(tmp) / "million.yaml"
        path.write_text(CONFIG.format(n=a.size))
        swept = Path(tmp) / "swept.yaml"
        swept.write_text(
            SWEPT.format(n=a.size).replace(f"range(1, {a.size} + 1)", f"range(1, {a.size + 1})")
        )
        runs = common.alternate(
            {
                "plain python": lambda: measure(["--child", "reference", str(a.size)]),
                "shoal": lambda: measure(["--child", "shoal", str(path)]),
                "shoal, cpus swept": lambda: measure(["--child", "shoal", str(swept)]),
            },
            a.repeats,
            not a.quiet,
        )
    ref = common.medians(runs["plain python"])
    got = common.medians(runs["shoal"])
    var = common.medians(runs["shoal, cpus swept"])
    tasks = int(got["tasks"])
    time_met = got["seconds"] <= TIME_TARGET
    mem_met = got["peak_mb"] <= MEMORY_TARGET
    summary = (
        f"{tasks:,}-task product sweep: load and validate {got['load']:.2f} s, build every task "
        f"{got['build']:.2f} s, in all {got['seconds']:.2f} s (target <= {TIME_TARGET:g} s: "
        f"{'met' if time_met else 'NOT met'}), peak {got['peak_mb']:.0f} MB (target <= "
        f"{MEMORY_TARGET:g} MB: {'met' if mem_met else 'NOT met'}); shoal plan "
        f"{got['plan']:.3f} s more. With cpus taken from a swept parameter (options checked "
        f"per distinct value): {var['seconds']:.2f} s, {var['peak_mb']:.0f} MB. Plain Python "
        f"rows + command lines: {ref['seconds']:.2f} s, {ref['peak_mb']:.0f} MB"
    )
    rows = [
        common.row(
            f"expand and validate a {tasks:,}-task product sweep (seconds)",
            got["seconds"],
            ref["seconds"],
            got["seconds"],
            f"<= {TIME_TARGET:g} s",
            time_met,
            "s",
        ),
        common.row(
            f"expand and validate a {tasks:,}-task product sweep (peak memory)",
            got["peak_mb"],
            ref["peak_mb"],
            got["peak_mb"],
            f"<= {MEMORY_TARGET:g} MB",
            mem_met,
            "MB",
        ),
        common.row(
            "the same with cpus: '{a}' swept (seconds)",
            var["seconds"],
            ref["seconds"],
            var["seconds"],
            f"<= {TIME_TARGET:g} s",
            var["seconds"] <= TIME_TARGET and var["peak_mb"] <= MEMORY_TARGET,
            "s",
        ),
    ]
    common.report("config", summary, rows, {"runs": runs}, a)


if __name__ == "__main__":
    main()
