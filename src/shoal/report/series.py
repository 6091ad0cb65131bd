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

# Cores and GPUs of an attempt, summed over its nodes, and its first node and core, in SQL:
# json.loads on a million placements would take longer than the rest together.
_ATTEMPTS = (
    "SELECT COALESCE(a.started, a.dispatched), a.ended, a.outcome, a.kind, t.tags,"
    " (SELECT sum(json_array_length(value, '$[1]')) FROM json_each(a.placement)),"
    " (SELECT sum(json_array_length(value, '$[2]')) FROM json_each(a.placement)),"
    " json_extract(a.placement, '$[0][0]'), json_extract(a.placement, '$[0][1][0]'), a.task"
    " FROM attempts a JOIN tasks t ON t.id = a.task"
    " WHERE COALESCE(a.started, a.dispatched) IS NOT NULL"
    " ORDER BY COALESCE(a.started, a.dispatched)"
)


def series(rundir: Path, now: float | None = None, ended: float | None = None) -> dict[str, Any]:
    """The charts' numbers of the run in ``rundir``; times in seconds since it was created.
    ``ended``: when the run ended (None: it goes on, or it is not known, and ``now`` closes
    the attempts still open)."""
    import numpy as np

    now = time.time() if now is None else now
    with Reader(rundir) as r:
        meta = r.meta()
        nodes = r.nodes()
        rows = r.conn.execute(_ATTEMPTS).fetchall()
    created = float(meta.get("created") or (rows[0][0] if rows else now))
    until = ended if ended is not None else now
    span = max(until - created, 1e-6)
    n = len(rows)
    start = np.fromiter((row[0] for row in rows), float, n) - created
    end = np.fromiter((row[1] if row[1] is not None else until for row in rows), float, n)
    end -= created
    cores = np.fromiter((row[5] or 1 for row in rows), float, n)
    gpus = np.fromiter((row[6] or 0 for row in rows), float, n)
    outcome = [row[2] or "running" for row in rows]
    ok = np.fromiter((o == "succeeded" for o in outcome), bool, n)
    edges = np.linspace(0.0, span, BINS + 1)
    width = edges[1] - edges[0]
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
        "width": width,  # of each bin, in seconds
        "succeeded": np.histogram(end[ok], edges)[0].tolist(),  # attempts ended in each bin
        "failed": np.histogram(end[np.asarray([o == "failed" for o in outcome], bool)], edges)[
            0
        ].tolist(),
        "gantt": _gantt(rows, start, end, outcome, nodes),
        "tags": _tags(rows, start, end, outcome),
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
    rows: list[Any], start: Any, end: Any, outcome: list[str], nodes: list[dict[str, Any]]
) -> dict[str, Any]:
    """Attempts as bars on (node, first core) rows: every one, or :data:`GANTT` of them
    sampled evenly (and then said: ``sampled``)."""
    n = len(rows)
    pick = range(n) if n <= GANTT else [round(i * (n - 1) / (GANTT - 1)) for i in range(GANTT)]
    names = [x["name"] for x in nodes]
    bars = []
    for i in pick:
        node, core = rows[i][7], rows[i][8]
        label = f"{names[node] if node is not None and node < len(names) else '?'}:{core or 0}"
        bars.append(
            [label, round(float(start[i]), 4), round(float(end[i]), 4), outcome[i], rows[i][9]]
        )
    return {"bars": bars, "sampled": n > GANTT, "of": n}


def _tags(rows: list[Any], start: Any, end: Any, outcome: list[str]) -> list[dict[str, Any]]:
    """Per tag (the largest :data:`TAGS`, and the untagged): attempts, how they ended, and
    their run times (mean, median, 90th percentile, longest)."""
    import numpy as np

    seen: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for tag in json.loads(row[4]) or ("(no tag)",):
            seen.setdefault(tag, []).append(i)
    out = []
    for tag, idx in sorted(seen.items(), key=lambda kv: -len(kv[1]))[:TAGS]:
        pos = np.asarray(idx)
        took = end[pos] - start[pos]
        ends = [outcome[i] for i in idx]
        out.append(
            {
                "tag": tag,
                "attempts": len(idx),
                "succeeded": ends.count("succeeded"),
                "failed": ends.count("failed"),
                "running": ends.count("running"),
                "mean": round(float(took.mean()), 4),
                "p50": round(float(np.percentile(took, 50)), 4),
                "p90": round(float(np.percentile(took, 90)), 4),
                "max": round(float(took.max()), 4),
            }
        )
    return out
