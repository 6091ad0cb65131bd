"""A run over time, as numbers for charts (the dashboard's run page): cores and GPUs in use
against capacity, tasks finished a second, a Gantt chart of attempts on nodes and cores (a
sample when there are many), and statistics per tag.

Everything comes from one read of the attempts (read-only), aggregated in SQLite and numpy:
about 3 s for a million attempts on one core, so callers keep the answer (the dashboard does,
and adds what status.json says after it while the run goes on).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shoal.store.queries import Reader

BINS = 240  # points of the utilization and throughput curves
GANTT = 1500  # attempts in the Gantt chart at most (sampled evenly above)
TAGS = 12  # tags with statistics at most (the largest)

# Cores (or GPUs: ``$[2]``) of an attempt summed over its nodes, in SQL: json.loads on a
# million placements would take longer than the rest together.
_SUM = (
    "CASE WHEN json_array_length(placement) = 1 THEN json_array_length(placement, '$[0][{i}]')"
    " ELSE (SELECT sum(json_array_length(value, '$[{i}]')) FROM json_each(placement)) END"
)
_ATTEMPTS = (
    "SELECT COALESCE(started, dispatched), ended, outcome, "
    + _SUM.format(i=1)
    + ", "
    + _SUM.format(i=2)
    + ", task, attempt FROM attempts WHERE COALESCE(started, dispatched) IS NOT NULL"
    " ORDER BY COALESCE(started, dispatched)"
)
# Per tag (NULL: untagged) and outcome (NULL: still running): attempts, and their run times
_TAGS = (
    "SELECT j.value, a.outcome, count(*), sum(COALESCE(a.ended, ?) - COALESCE(a.started,"
    " a.dispatched)), max(COALESCE(a.ended, ?) - COALESCE(a.started, a.dispatched))"
    " FROM attempts a JOIN tasks t ON t.id = a.task LEFT JOIN json_each(t.tags) j"
    " WHERE COALESCE(a.started, a.dispatched) IS NOT NULL GROUP BY 1, 2"
)


def series(rundir: Path, now: float | None = None, ended: float | None = None) -> dict[str, Any]:
    """The charts' numbers of the run in ``rundir``; times in seconds since it was created.
    ``ended``: when the run ended (None: it goes on, or it is not known, and ``now`` closes
    the attempts still open)."""
    import numpy as np

    now = time.time() if now is None else now
    until = ended if ended is not None else now
    with Reader(rundir) as r:
        meta = r.meta()
        nodes = r.nodes()
        rows = r.conn.execute(_ATTEMPTS).fetchall()
        tags = r.conn.execute(_TAGS, (until, until)).fetchall()
        created = float(meta.get("created") or (rows[0][0] if rows else now))
        span = max(until - created, 1e-6)
        n = len(rows)
        start = np.fromiter((row[0] for row in rows), float, n) - created
        end = np.fromiter((until if row[1] is None else row[1] for row in rows), float, n)
        end -= created
        cores = np.fromiter((row[3] or 1 for row in rows), float, n)
        gpus = np.fromiter((row[4] or 0 for row in rows), float, n)
        ok = np.fromiter((row[2] == "succeeded" for row in rows), bool, n)
        bad = np.fromiter((row[2] == "failed" for row in rows), bool, n)
        gantt = _gantt(r, rows, start, end, nodes)
    edges = np.linspace(0.0, span, BINS + 1)
    total_cores = sum(len(x["cores"]) for x in nodes)
    total_gpus = sum(len(x["gpus"]) for x in nodes)
    busy = float(((end - start) * cores).sum())
    return {
        "created": created,
        "until": until,
        "span": span,
        "capacity": {"cores": total_cores, "gpus": total_gpus},
        "attempts": n,
        "efficiency": busy / (total_cores * span) if total_cores else None,
        "time": edges[:-1].round(3).tolist(),
        "cores": _average(start, end, cores, edges).round(3).tolist(),
        "gpus": _average(start, end, gpus, edges).round(3).tolist(),
        "width": float(edges[1] - edges[0]),  # of each bin, in seconds
        "succeeded": np.histogram(end[ok], edges)[0].tolist(),  # attempts ended in each bin
        "failed": np.histogram(end[bad], edges)[0].tolist(),
        "gantt": gantt,
        "tags": _tags(tags),
    }


def _average(start: Any, end: Any, what: Any, edges: Any) -> Any:
    """The mean of ``what`` in use over each bin (attempts from ``start`` to ``end``): the
    integral of the step function over each bin, divided by its width."""
    import numpy as np

    times = np.concatenate([start, end])
    change = np.concatenate([what, -what])
    order = np.argsort(times, kind="stable")
    times, level = times[order], np.cumsum(change[order])
    # the integral up to each change, then up to each edge
    area = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(times))]) if len(times) else None
    if area is None:
        return np.zeros(len(edges) - 1)
    at = np.searchsorted(times, edges, side="right") - 1
    inside = at >= 0
    upto = np.zeros(len(edges))
    idx = at[inside]
    upto[inside] = area[idx] + level[idx] * (edges[inside] - times[idx])
    return np.maximum(np.diff(upto) / np.diff(edges), 0.0)


def _gantt(
    r: Reader, rows: list[Any], start: Any, end: Any, nodes: list[dict[str, Any]]
) -> dict[str, Any]:
    """Attempts as bars on the (node, core) rows they held: every one, or :data:`GANTT` of them
    sampled evenly (and then said: ``sampled``); only the sampled ones' placements are read."""
    n = len(rows)
    pick = range(n) if n <= GANTT else [round(i * (n - 1) / (GANTT - 1)) for i in range(GANTT)]
    names = [x["name"] for x in nodes]
    bars = []
    for i in pick:
        task, attempt = rows[i][5], rows[i][6]
        got = r.conn.execute(
            "SELECT placement FROM attempts WHERE task = ? AND attempt = ?", (task, attempt)
        ).fetchone()
        slots = json.loads(got[0]) if got and got[0] else []
        where = [
            f"{names[node] if 0 <= node < len(names) else '?'}:{core}"
            for node, cores, *_ in slots
            for core in cores
        ] or ["?:0"]
        outcome = rows[i][2] or "running"
        bars.append([where, round(float(start[i]), 4), round(float(end[i]), 4), outcome, task])
    return {"bars": bars, "sampled": n > GANTT, "of": n}


def _tags(grouped: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Per tag (the largest :data:`TAGS`; "(no tag)" for the untagged): attempts, how they
    ended, and their run times (mean and longest; a running one's up to now)."""
    by: dict[str, dict[str, Any]] = {}
    for tag, outcome, count, total, longest in grouped:
        t = by.setdefault(
            "(no tag)" if tag is None else str(tag),
            {"attempts": 0, "succeeded": 0, "failed": 0, "running": 0, "sum": 0.0, "max": 0.0},
        )
        t["attempts"] += count
        key = "running" if outcome is None else outcome
        if key in ("succeeded", "failed", "running"):
            t[key] += count
        t["sum"] += total or 0.0
        t["max"] = max(t["max"], longest or 0.0)
    out = []
    for tag, t in sorted(by.items(), key=lambda kv: -kv[1]["attempts"])[:TAGS]:
        total = t.pop("sum")
        out.append(
            {"tag": tag, **t, "mean": round(total / t["attempts"], 4), "max": round(t["max"], 4)}
        )
    return out
