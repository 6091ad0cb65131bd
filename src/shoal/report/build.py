"""``shoal report``: a run as one self-contained HTML file (it opens offline: the figures are
inside it) and its figures as PNG files beside it.

Everything is read from the run directory, read-only: a finished, crashed, stopped or live run
(then "now" closes the attempts still running). The attempts are read once into numpy arrays,
so a run of a million tasks takes seconds; the Gantt chart draws at most :data:`GANTT`
attempts, sampled evenly, and says so.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.report.figures import pyplot
from shoal.store.queries import Reader
from shoal.store.runs import summary

GANTT = 3000  # attempts drawn in the Gantt chart at most (sampled evenly above)
TAGS = 6  # tags shown in the distributions at most (the largest)


@dataclass
class Timeline:
    """The attempts that started, as arrays (times in seconds since the run was created)."""

    start: Any
    end: Any  # "now" (or the run's end) for those still running
    cores: Any
    gpus: Any
    rows: list[list[int]]  # the (node, core) of each core of each, as node * width + core
    ok: Any  # bool: succeeded
    kinds: list[str]  # failure kind, or outcome, or "running"
    tags: list[tuple[str, ...]]
    wait: Any  # ready to start, nan where unknown


def timeline(rundir: Path, created: float, until: float, width: int) -> Timeline:
    import numpy as np

    cols: list[list[Any]] = [[] for _ in range(9)]
    with Reader(rundir) as r:
        for _task, _attempt, placement, started, ended, outcome, kind, tags, ready in r.timeline():
            slots = json.loads(placement) if placement else []
            cols[0].append(started - created)
            cols[1].append((ended if ended is not None else until) - created)
            cols[2].append(sum(len(s[1]) for s in slots) or 1)
            cols[3].append(sum(len(s[2]) for s in slots))
            cols[4].append([int(s[0]) * width + int(c) for s in slots for c in s[1]] or [0])
            cols[5].append(outcome == "succeeded")
            cols[6].append(kind or outcome or "running")
            cols[7].append(tuple(json.loads(tags)))
            cols[8].append(started - ready if ready is not None else float("nan"))
    return Timeline(
        np.asarray(cols[0], float),
        np.asarray(cols[1], float),
        np.asarray(cols[2], int),
        np.asarray(cols[3], int),
        cols[4],
        np.asarray(cols[5], bool),
        cols[6],
        cols[7],
        np.asarray(cols[8], float),
    )


def in_use(t: Timeline, what: Any, span: float) -> tuple[Any, Any]:
    """A step function of how much of ``what`` (cores or GPUs per attempt) was in use."""
    import numpy as np

    times = np.concatenate([t.start, t.end, [0.0, span]])
    change = np.concatenate([what, -what, [0, 0]])
    order = np.argsort(times, kind="stable")
    return times[order], np.cumsum(change[order])


def report(rundir: Path, output: Path | None = None) -> Path:
    """Write the report of the run in ``rundir``; the path of its HTML file."""
    st = summary(rundir, details=True)
    with Reader(rundir) as r:
        nodes = r.nodes()
        meta = r.meta()
    created = float(meta.get("created") or 0.0)
    until = float(st["ended"] or time.time())
    span = max(until - created, 1e-9)
    width = max((max(n["cores"], default=0) + 1 for n in nodes), default=1)
    t = timeline(rundir, created, until, width)
    cores = sum(len(n["cores"]) for n in nodes)
    gpus = sum(len(n["gpus"]) for n in nodes)
    busy = float(((t.end - t.start) * t.cores).sum())
    efficiency = busy / (cores * span) if cores else 0.0
    out = output or rundir / "report" / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    figs = _figures(t, out.parent, span, cores, gpus, width, nodes)
    numbers = {
        "run": st["run"],
        "directory": str(rundir),
        "life": st["life"],
        "outcome": st["state"],
        "tasks": st["total"],
        "attempts": len(t.start),
        "duration (s)": round(span, 1),
        "cores, GPUs": f"{cores}, {gpus}",
        "busy core-seconds": round(busy, 1),
        "efficiency (busy core-seconds / capacity)": f"{efficiency:.1%}",
        "throughput (tasks/s)": (st["throughput"] or {}).get("overall"),
        **{f"tasks {k}": v for k, v in sorted(st["counts"].items())},
    }
    out.write_text(_html(numbers, figs, st["failures"]))
    return out


def _figures(
    t: Timeline,
    folder: Path,
    span: float,
    cores: int,
    gpus: int,
    width: int,
    nodes: list[dict[str, Any]],
) -> dict[str, Path]:
    """Draw every figure into ``folder``; their paths by name."""
    plt = pyplot()
    made: dict[str, Path] = {}
    drawings: list[tuple[str, Callable[[Any], None]]] = [
        ("utilization", lambda ax: _utilization(ax, t, span, cores, gpus)),
        ("gantt", lambda ax: _gantt(ax, t, width, [n["name"] for n in nodes])),
        ("runtimes", lambda ax: _spread(ax, t, t.end - t.start, "run time (s)")),
        ("waits", lambda ax: _spread(ax, t, t.wait, "queue wait, ready to start (s)")),
        ("failures", lambda ax: _failures(ax, t)),
        ("throughput", lambda ax: _throughput(ax, t)),
    ]
    for name, draw in drawings:
        fig, ax = plt.subplots(figsize=(9, 4 if name == "gantt" else 3.2))
        draw(ax)
        fig.tight_layout()
        made[name] = folder / f"{name}.png"
        fig.savefig(made[name], dpi=100)
        plt.close(fig)
    return made


def _utilization(ax: Any, t: Timeline, span: float, cores: int, gpus: int) -> None:
    x, y = in_use(t, t.cores, span)
    ax.step(x, y, where="post", label="cores in use")
    ax.axhline(cores, color="k", ls="--", lw=0.8, label=f"capacity ({cores} cores)")
    if gpus:
        gx, gy = in_use(t, t.gpus, span)
        ax.step(gx, gy, where="post", label="GPUs in use")
        ax.axhline(gpus, color="grey", ls=":", lw=0.8, label=f"{gpus} GPUs")
    ax.set(xlabel="seconds since the start", ylabel="in use", title="Utilization")
    ax.legend(loc="upper right", fontsize=8)


def _gantt(ax: Any, t: Timeline, width: int, names: list[str]) -> None:
    n = len(t.start)
    pick = range(n) if n <= GANTT else [round(i * (n - 1) / (GANTT - 1)) for i in range(GANTT)]
    for i in pick:
        colour = "#31a354" if t.ok[i] else ("#fd8d3c" if t.kinds[i] == "running" else "#de2d26")
        for row in t.rows[i]:
            ax.barh(row, t.end[i] - t.start[i], left=t.start[i], height=0.8, color=colour)
    ax.set(xlabel="seconds since the start", ylabel="node:core")
    ticks = sorted({r for i in pick for r in t.rows[i]})[:40]
    labels = [f"{names[r // width] if r // width < len(names) else '?'}:{r % width}" for r in ticks]
    ax.set_yticks(ticks, labels, fontsize=6)
    note = f" (sampled: {len(pick)} of {n} attempts)" if n > GANTT else ""
    ax.set_title("Tasks on nodes and cores" + note)


def _spread(ax: Any, t: Timeline, values: Any, label: str) -> None:
    groups = _by_tag(t)
    for tag, idx in groups:
        v = values[idx]
        v = v[v == v]  # not nan
        if len(v):
            ax.hist(v, bins=40, histtype="step", label=f"{tag} ({len(v)})")
    ax.set(xlabel=label, ylabel="attempts", title=label.split(" (")[0].capitalize() + " by tag")
    if groups:
        ax.legend(fontsize=8)


def _failures(ax: Any, t: Timeline) -> None:
    bad: dict[str, int] = {}
    for i in range(len(t.start)):
        if not t.ok[i] and t.kinds[i] != "running":
            bad[t.kinds[i]] = bad.get(t.kinds[i], 0) + 1
    if bad:
        ax.bar(list(bad), list(bad.values()), color="#de2d26")
    else:
        ax.text(0.5, 0.5, "no failed attempts", ha="center", va="center", transform=ax.transAxes)
    ax.set(ylabel="attempts", title="Failed attempts by kind")


def _throughput(ax: Any, t: Timeline) -> None:
    done = t.end[t.ok]
    if len(done):
        ax.hist(done, bins=min(100, max(10, len(done) // 20)), color="#3182bd")
    ax.set(xlabel="seconds since the start", ylabel="tasks finished", title="Throughput")


def _by_tag(t: Timeline) -> list[tuple[str, Any]]:
    """(tag, indexes of its attempts) for the largest tags, and the untagged."""
    import numpy as np

    seen: dict[str, list[int]] = {}
    for i, tags in enumerate(t.tags):
        for tag in tags or ("(no tag)",):
            seen.setdefault(tag, []).append(i)
    top = sorted(seen.items(), key=lambda kv: -len(kv[1]))[:TAGS]
    return [(tag, np.asarray(idx)) for tag, idx in top]


def _html(numbers: dict[str, Any], figs: dict[str, Path], failures: list[dict[str, Any]]) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in numbers.items())
    images = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"></figure>'
        for name, path in figs.items()
    )
    failed = "".join(
        f"<tr><td>#{f['id']}</td><td>{e(str(f['name']))}</td><td>{e(str(f['kind']))}</td>"
        f"<td>{e(str(f['reason']))}</td></tr>"
        for f in failures
    )
    failed_table = (
        "<h2>Failures (first 20)</h2><table><tr><th>task</th><th>name</th><th>kind</th>"
        f"<th>reason</th></tr>{failed}</table>"
        if failures
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>shoal report: {e(str(numbers['run']))}</title><style>"
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left}img{max-width:100%}figure{margin:1em 0}</style></head><body>"
        f"<h1>Run {e(str(numbers['run']))}</h1><table>{rows}</table>{failed_table}"
        f"<h2>Figures</h2>{images}<p>Made by shoal report on "
        f"{e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p></body></html>\n"
    )
