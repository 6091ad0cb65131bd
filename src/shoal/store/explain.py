"""Where a task stands, in words: ``shoal explain`` and the dashboard's task page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shoal.store.queries import WAITING, Reader
from shoal.store.runs import Life, live_status, placement_words, summary


def took(seconds: float | None) -> str:
    """A duration for a person: 4.2 s, 3.5 min, 2.1 h."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def why(rundir: Path, ref: str) -> list[str]:
    """The lines of ``shoal explain``: where a task stands and what it waits for."""
    st = summary(rundir)
    with Reader(rundir) as r:
        row = r.find(ref)
        nodes = r.nodes()
        opts = r.options(row.id)
        deps = [r.find(str(i)) for i in row.deps]
        attempts = r.attempts(row.id)
    out = [f"task #{row.id} {row.name}: {row.state}" + (f" ({row.reason})" if row.reason else "")]
    if row.state == "running" and attempts:
        a = attempts[-1]
        since = time.time() - a["started"] if a["started"] else None
        out.append(
            f"  running attempt {a['attempt']} on {placement_words(a['placement'], nodes)}"
            + (f" for {took(since)}" if since is not None else "")
        )
        return out
    if row.state not in (*WAITING, "retrying"):
        out.append(f"  it is not waiting: {_ended(row.state)}")
        return out
    if st["life"] != Life.LIVE:
        out.append(
            f"  the run is {st['life']}: nothing starts until it is resumed (shoal resume {rundir})"
        )
    if row.state == "retrying":
        out.append("  it failed and waits out its retry backoff before the next attempt")
    unfinished = [t for t in deps if t.state != "succeeded"]
    if unfinished:
        shown = ", ".join(f"#{t.id} {t.name} ({t.state})" for t in unfinished[:10])
        more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
        out.append(
            f"  it waits for {len(unfinished)} of its {len(deps)} dependencies: {shown}{more}"
        )
    elif row.state == "pending" and deps:
        out.append("  its dependencies succeeded; it is about to be ready")
    if row.state in ("ready", "queued") or not unfinished:
        out.extend(_resources(rundir, row.state, opts, nodes, st))
    return out


def _ended(state: str) -> str:
    return {
        "succeeded": "it succeeded (shoal result TASK prints its result)",
        "failed": "it failed (shoal logs TASK shows why; shoal retry or rerun runs it again)",
        "dep_failed": "a task it depends on failed, so it never ran",
        "cancelled": "it was cancelled",
        "skipped": "it was skipped (a Response stopped its branch, or the run stopped)",
    }.get(state, state)


def _resources(
    rundir: Path, state: str, opts: dict[str, Any], nodes: list[dict[str, Any]], st: dict[str, Any]
) -> list[str]:
    """What the task needs against the nodes and what is free now (status.json)."""
    cpus, gpus = int(opts.get("cpus") or 1), int(opts.get("gpus") or 0)
    ranks = int(opts.get("ranks") or 1)
    need = f"{cpus * ranks} core(s)" + (f" and {gpus * ranks} GPU(s)" if gpus else "")
    widest = max((len(n["cores"]) for n in nodes), default=0)
    most_gpus = max((len(n["gpus"]) for n in nodes), default=0)
    if ranks == 1 and (cpus > widest or gpus > most_gpus):
        return [
            f"  it needs {need} on one node, and the largest node has {widest} cores and "
            f"{most_gpus} GPUs: it can never start here"
        ]
    if state == "queued":
        return [
            f"  it is queued on a slot behind a running task of the same shape ({need}); it "
            "starts there when that task ends"
        ]
    res = live_status(rundir).get("resources") or {}
    if not res:
        return [f"  it needs {need}; how much is free is known only while the run goes"]
    free_cores = res.get("cores", 0) - res.get("cores_used", 0)
    free_gpus = res.get("gpus", 0) - res.get("gpus_used", 0)
    line = f"  it needs {need}; free now: {free_cores} of {res.get('cores')} cores" + (
        f", {free_gpus} of {res.get('gpus')} GPUs" if gpus else ""
    )
    if free_cores >= cpus * ranks and free_gpus >= gpus * ranks:
        line += (
            " (enough: tasks before it in the queue, or one the scheduler reserves for, go first)"
        )
    return [line]
