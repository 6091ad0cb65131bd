"""Two versions of shoal side by side: this working tree against an earlier commit.

A change that should not change speed (a refactor) is held to "within noise of before",
measured in the same invocation, alternating: base, this, base, this, ... Each version runs its
own benchmark scripts against its own source (``PYTHONPATH``), so a script that imports a name
the change moved still measures the same workload. For each row the medians of both sides are
printed with their ratio (this / base), and each side's own reference ratio (``value``).

    python bench/versus.py --base 45ea8e8 [--only w1,w2,w3,w4,w5] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

SCRIPTS = ("w1", "w2", "w3", "w4", "w5")


def run_script(tree: Path, name: str, timeout: float) -> dict[str, Any] | None:
    """One run of ``bench/<name>.py`` of ``tree`` on ``tree``'s source; its JSON or None."""
    with tempfile.TemporaryDirectory(prefix="shoal-versus-") as tmp:
        out = Path(tmp) / f"{name}.json"
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        argv = [sys.executable, str(tree / "bench" / f"{name}.py"), "--json", str(out)]
        try:
            proc = subprocess.run(argv, env=env, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            print(f"   {name} on {tree}: did not finish in {timeout:g} s", file=sys.stderr)
            return None
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            print(f"   {name} on {tree}: exit {proc.returncode}: {tail}", file=sys.stderr)
            return None
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc


def worktree(base: str) -> Path:
    """A checkout of ``base`` in a temporary folder (removed at exit by the caller)."""
    path = Path(tempfile.mkdtemp(prefix="shoal-base-")) / "tree"
    subprocess.run(
        ["git", "-C", str(common.ROOT), "worktree", "add", "--detach", "-q", str(path), base],
        check=True,
    )
    return path


def compare(
    base_runs: list[dict[str, Any]], this_runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per row (by workload text): medians of shoal's number and of the row's value."""
    rows: list[dict[str, Any]] = []
    for i, row in enumerate(this_runs[0]["rows"] if this_runs else []):

        def col(runs: list[dict[str, Any]], key: str, i: int = i) -> float | None:
            vals = [r["rows"][i][key] for r in runs if i < len(r["rows"])]
            nums = [v for v in vals if isinstance(v, int | float)]
            return statistics.median(nums) if nums else None

        b, t = col(base_runs, "shoal"), col(this_runs, "shoal")
        rows.append(
            {
                "workload": row["workload"],
                "unit": row.get("unit") or "",
                "base": b,
                "this": t,
                "ratio": (t / b) if b and t is not None else None,
                "base value": col(base_runs, "value"),
                "this value": col(this_runs, "value"),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare against")
    p.add_argument("--only", default=",".join(SCRIPTS))
    p.add_argument("--rounds", type=int, default=3, help="runs a side, alternated")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per script run")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args()
    names = a.only.split(",")
    base = worktree(a.base)
    this = common.ROOT
    out: dict[str, Any] = {"base": a.base, "machine": common.machine(), "results": {}}
    try:
        for name in names:
            runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
            for k in range(a.rounds):
                for side, tree in (("base", base), ("this", this)):
                    print(f"== {name} round {k + 1}: {side}", file=sys.stderr, flush=True)
                    doc = run_script(tree, name, a.timeout)
                    if doc is not None:
                        runs[side].append(doc)
            out["results"][name] = compare(runs["base"], runs["this"])
    finally:
        subprocess.run(
            ["git", "-C", str(this), "worktree", "remove", "--force", str(base)], check=False
        )
    print(f"\nthis tree against {a.base}, {a.rounds} alternated runs a side, medians\n")
    print("| workload | base | this | this/base | value base | value this |")
    print("|---|---|---|---|---|---|")
    for rows in out["results"].values():
        for r in rows:
            print(
                f"| {r['workload']} | {common.fmt(r['base'])} {r['unit']} | "
                f"{common.fmt(r['this'])} {r['unit']} | {common.fmt(r['ratio'])} | "
                f"{common.fmt(r['base value'])} | {common.fmt(r['this value'])} |"
            )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
