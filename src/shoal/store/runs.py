"""Runs as a person asks about them: which runs are under a folder, and what each one is now
(live, finished, interrupted, crashed, lost), read-only, for ``shoal runs``, ``shoal status``
and the dashboard.

What the store says is not the whole answer: a run whose driver was killed still reads
"running", so a run recorded as running is live only while its driver exists (which can be
known on the driver's host only), and lost otherwise. A live run's counts come from its
``status.json``, which the driver rewrites every second (its store says "pending" for ready
and queued tasks too, to save row updates).
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.store.queries import Reader

DEPTH = 3  # how deep below a folder runs are looked for
MOST = 1000  # runs listed at most (newest first)


class Life(enum.StrEnum):
    """Where a run is in its life, as a person asks it."""

    LIVE = "live"  # its driver is running it
    FINISHED = "finished"  # it ended: every task ran, or could not (outcome: succeeded, failed)
    INTERRUPTED = "interrupted"  # stopped early (a signal, a deadline, a stop): resumable
    CRASHED = "crashed"  # its driver stopped on an error: resumable
    LOST = "lost"  # recorded as running, but its driver is gone (killed, or its node failed)


def life(state: str | None, host: str | None, pid: Any) -> Life:
    """The life of a run whose store records ``state``, driven from ``host`` by ``pid``."""
    if state == "running":
        return Life.LIVE if driver_alive(host, pid) else Life.LOST
    if state in ("succeeded", "failed"):
        return Life.FINISHED
    if state == "crashed":
        return Life.CRASHED
    return Life.INTERRUPTED  # stopped, interrupted


def driver_alive(host: str | None, pid: Any) -> bool:
    """Whether a driver still exists (assumed so when it ran on another host)."""
    if host != socket.gethostname() or not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_runs(base: Path, depth: int = DEPTH, most: int = MOST) -> list[Path]:
    """The run directories at or below ``base`` (``depth`` folders down at most), newest
    first, ``most`` of them; a run directory's own folders are not searched."""
    found = list(_walk(base, depth))
    found.sort(key=lambda d: (d / "shoal.db").stat().st_mtime, reverse=True)
    return found[:most]


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    if (folder / "shoal.db").is_file():
        yield folder
        return
    if depth <= 0:
        return
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:  # unreadable: skipped
        return
    for child in children:
        yield from _walk(child, depth - 1)


def live_status(rundir: Path) -> dict[str, Any]:
    """What the driver last wrote to ``status.json`` ({} when there is none, or it is torn)."""
    try:
        data = json.loads((rundir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def summary(rundir: Path, details: bool = False) -> dict[str, Any]:
    """A run at a glance: its name, life, outcome, counts by state, start, duration and
    throughput (tasks finished a second: ``overall``, and ``recent`` while it runs, as
    status.json has them); with ``details``: its nodes, the tasks running and
    the failures (20 of each), the rules, and what status.json says of resources and groups."""
    live = live_status(rundir)
    with Reader(rundir) as r:
        meta = r.meta()
        state = meta.get("state")
        counts = _known_counts(meta, live) or r.counts()
        more = (
            {
                "nodes": r.nodes(),
                "running": r.running(limit=20) if counts.get("running") else [],
                "failures": r.failures(limit=20) if counts.get("failed") else [],
                "rules": r.rules(),
            }
            if details
            else {}
        )
    created, ended = meta.get("created"), meta.get("ended")
    now = time.time()
    state_of = life(state, meta.get("host"), meta.get("pid"))
    if state_of == Life.LOST:  # it ended unrecorded: its last word is status.json's
        ended = live.get("updated")
    took = ((ended or now) - created) if created else None
    if state_of != Life.LIVE and not ended:
        took = None  # the end was never recorded
    done = sum(v for k, v in counts.items() if k in ("succeeded", "failed"))
    out: dict[str, Any] = {
        "run": meta.get("name"),
        "dir": str(rundir),
        "life": state_of.value,
        "state": state,
        "created": created,
        "ended": ended,
        "duration": took,
        "total": sum(counts.values()),
        "counts": counts,
        "throughput": live.get("throughput")
        if state == "running"
        else {"recent": None, "overall": round(done / took, 2) if took else None},
        "pid": meta.get("pid"),
        "host": meta.get("host"),
        "backend": meta.get("backend"),
        "stop_reason": meta.get("stop_reason"),
        "crash_reason": meta.get("crash_reason"),
    }
    if details:
        out.update(
            {
                "nodes": [
                    {"name": n["name"], "cores": len(n["cores"]), "gpus": len(n["gpus"])}
                    for n in more["nodes"]
                ],
                "running": more["running"],
                "failures": more["failures"],
                "rules": more["rules"],
                "resources": live.get("resources"),
                "groups": live.get("groups", {}),
            }
        )
    return out


def _known_counts(meta: dict[str, Any], live: dict[str, Any]) -> dict[str, int] | None:
    """The counts by state without counting rows, where they are known: a live run's from
    status.json, an ended run's from what the driver recorded at its end (a crashed run's
    are counted: its last write may not have happened)."""
    state = meta.get("state")
    if state == "running" and live.get("counts"):
        return {k: v for k, v in live["counts"].items() if v}
    known = meta.get("counts")
    if state not in ("running", "crashed") and isinstance(known, dict):
        return {str(k): int(v) for k, v in known.items() if v}
    return None


def spans(ids: list[int] | tuple[int, ...]) -> str:
    """Ids as ranges: 0-3,8,10-11."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def placement_words(placement: list[list[Any]] | None, nodes: list[dict[str, Any]]) -> str:
    """A placement in words: ``node vm, cores 0-3, GPUs 1``; several nodes joined by ``;``.
    ``nodes``: the run's nodes (``Reader.nodes``), whose names stand for their indexes."""
    if not placement:
        return "no placement"
    parts = []
    for node, cores, gpus, *_ in placement:
        name = nodes[node]["name"] if 0 <= node < len(nodes) else f"#{node}"
        text = f"node {name}, {'core' if len(cores) == 1 else 'cores'} {spans(cores)}"
        if gpus:
            text += f", {'GPU' if len(gpus) == 1 else 'GPUs'} {spans(gpus)}"
        parts.append(text)
    return "; ".join(parts)
