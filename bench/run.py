"""Run every benchmark (default sizes), collect their JSON and print a markdown table.

Each script runs in its own process with ``--json``; a script that fails or hangs is reported
as such and the others still run.

    python bench/run.py [--only w1,w3] [--full] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent
SCRIPTS = ("w1", "w2", "w3", "w4", "w5", "steer", "durable", "config", "w1dask", "slurm")


def run_one(name: str, extra: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-json-") as tmp:
        out = Path(tmp) / f"{name}.json"
        argv = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out), *extra]
        print(f"== {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, timeout=timeout, stdout=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            return failed(name, f"did not finish within {timeout:g} s", time.perf_counter() - t0)
        took = time.perf_counter() - t0
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0 or not out.exists():
            last = (proc.stdout.strip().splitlines() or ["(no output; see stderr above)"])[-1]
            return failed(name, f"exit {proc.returncode}: {last}", took)
        doc: dict[str, Any] = json.loads(out.read_text())
    doc["seconds"] = took
    return doc


def failed(name: str, why: str, took: float) -> dict[str, Any]:
    row = common.row(f"{name.upper()} FAILED: {why}", None, None, None, "-", False)
    return {
        "benchmark": name,
        "summary": f"{name}: FAILED ({why})",
        "rows": [row],
        "seconds": took,
        "error": why,
    }


def markdown(docs: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | shoal | reference | ratio or value | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for doc in docs:
        for r in doc["rows"]:
            unit = f" {r['unit']}" if r.get("unit") and r["shoal"] is not None else ""
            ref_unit = f" {r['unit']}" if r.get("unit") and r["reference"] is not None else ""
            met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
            lines.append(
                f"| {r['workload']} | {common.fmt(r['shoal'])}{unit} | "
                f"{common.fmt(r['reference'])}{ref_unit} | {common.fmt(r['value'])} | "
                f"{r['target']} | {met} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated subset of " + ",".join(SCRIPTS))
    p.add_argument("--full", action="store_true", help="full sizes where they are heavy (w5)")
    p.add_argument("--prefetch", type=int, help="shoal's prefetch= for every script")
    p.add_argument(
        "--run-timeout",
        type=float,
        default=120.0,
        help="seconds before one shoal run counts as hung (default 120; w5 scales it)",
    )
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per script (default 1800)"
    )
    p.add_argument("--json", metavar="PATH", help="write all results as one JSON document")
    p.add_argument("--markdown", metavar="PATH", help="write the table to PATH too")
    a = p.parse_args()
    names = a.only.split(",") if a.only else list(SCRIPTS)
    unknown = set(names) - set(SCRIPTS)
    if unknown:
        p.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")

    docs = []
    for name in names:
        extra = ["--run-timeout", str(a.run_timeout)]
        if a.prefetch is not None:
            extra += ["--prefetch", str(a.prefetch)]
        if a.full and name == "w5":
            extra.append("--full")
        docs.append(run_one(name, extra, a.timeout))

    info = common.machine()
    head = (
        f"Machine: {info['cpus']} CPUs ({info['cpus_usable']} usable), Python {info['python']}, "
        f"{info['platform']}, shoal {info['shoal']}, load {info['loadavg']}; {info['date']}"
    )
    table = markdown(docs)
    print()
    print(head)
    print()
    print(table)
    print()
    for doc in docs:
        print(f"* {doc['summary']} ({doc['seconds']:.0f} s)")
    if a.markdown:
        Path(a.markdown).write_text(head + "\n\n" + table + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "results": docs}, indent=2) + "\n")
    if any("error" in d for d in docs):
        sys.exit(1)


if __name__ == "__main__":
    main()
