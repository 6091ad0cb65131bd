"""What the dashboard shows, as JSON-ready data, read from run directories read-only.

Runs are named by their folder relative to the dashboard's base folder; a name is looked up
among the runs found there, so no path from a request is ever opened as given. A task's
files are found by its id.

The costly answers are kept: an ended run's summary until its database changes, and a run's
charts (:func:`shoal.report.series.series`, seconds on a million attempts); while a run goes
on, what its status.json says each second is added to its charts (:class:`Watch`), so that
watching a live run never reads its database more than once a minute.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import StoreError
from shoal.report.series import series
from shoal.store.dag import COLOURS, dag, levels
from shoal.store.explain import why
from shoal.store.queries import Reader
from shoal.store.runs import DEPTH, Life, find_runs, live_status, placement_words, summary

FIND_EVERY = 2.0  # seconds between looks for new run directories
PREVIEW = 2000  # characters of a result's repr shown
PREVIEW_BYTES = 1 << 20  # results larger than this are not unpickled for a preview
TAIL = 64 * 1024  # bytes of a log file sent at once
STREAMS = {"stdout": "stdout", "stderr": "stderr", "traceback": "traceback.txt"}
RECOMPUTE = 60.0  # a live run's charts are read again from its store at most this often
ENDED = ("succeeded", "failed", "dep_failed", "cancelled", "skipped")


class NotFound(StoreError):
    """No such run or task (the dashboard answers 404)."""


def _stamp(path: Path) -> tuple[int, int]:
    """What changes when a database is written: its and its WAL's modification times."""
    out = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            out.append(p.stat().st_mtime_ns)
        except OSError:
            out.append(0)
    return out[0], out[1]


class Catalog:
    """The runs under ``base`` (or ``base`` itself, a run directory)."""

    def __init__(self, base: Path, depth: int = DEPTH) -> None:
        self.base = base.resolve()
        self.depth = depth
        self._found: dict[str, Path] = {}
        self._looked = 0.0
        self._summaries: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def keys(self) -> dict[str, Path]:
        """Each run's name (its folder relative to the base; "." for the base) and folder."""
        with self._lock:
            if time.monotonic() - self._looked > FIND_EVERY:
                found = find_runs(self.base, self.depth)
                self._found = {
                    (d.relative_to(self.base).as_posix() if d != self.base else "."): d
                    for d in found
                }
                self._looked = time.monotonic()
            return dict(self._found)

    def resolve(self, key: str | None) -> Path:
        """The folder of the run named ``key``; the only run when ``key`` is empty and
        there is one."""
        found = self.keys()
        if not key and len(found) == 1:
            return next(iter(found.values()))
        if key in found:
            return found[key]
        self._looked = 0.0  # a run created since the last look
        found = self.keys()
        if key and key in found:
            return found[key]
        raise NotFound(f"no run {key!r} under {self.base}")

    def key_of(self, rundir: Path) -> str:
        return rundir.relative_to(self.base).as_posix() if rundir != self.base else "."

    def summary(self, rundir: Path, details: bool = False) -> dict[str, Any]:
        """A run's summary; an ended run's is kept until its database changes. A run that
        cannot be read is listed with the reason (``error``) rather than failing the page."""
        stamp = _stamp(rundir / "shoal.db")
        kept = self._summaries.get(rundir)
        if not details and kept and kept[0] == stamp:
            return kept[1]
        try:
            out = summary(rundir, details=details)
        except StoreError as err:
            return {"run": rundir.name, "dir": str(rundir), "life": "unreadable", "error": str(err)}
        out["key"] = self.key_of(rundir)
        if out["life"] not in (Life.LIVE, Life.LOST) and not details:
            self._summaries[rundir] = (stamp, out)
        return out

    def runs(self) -> list[dict[str, Any]]:
        return [self.summary(d) for d in self.keys().values()]


@dataclass
class Watch:
    """A run's charts: the store's numbers as of ``at``, and status.json's samples after."""

    at: float = 0.0  # when the store was read (monotonic)
    cost: float = 0.0  # how long that took
    charts: dict[str, Any] = field(default_factory=dict)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # time, cores,
    # GPUs in use, tasks finished
    updated: float = 0.0  # status.json's last "updated" sampled


class Charts:
    """Each run's :class:`Watch`, for every client of the dashboard."""

    def __init__(self) -> None:
        self._watches: dict[Path, Watch] = {}
        self._locks: dict[Path, threading.Lock] = {}  # one a run: a long read blocks no other
        self._lock = threading.Lock()  # guards the two dicts

    def _of(self, rundir: Path) -> tuple[Watch, threading.Lock]:
        with self._lock:
            return (
                self._watches.setdefault(rundir, Watch()),
                self._locks.setdefault(rundir, threading.Lock()),
            )

    def sample(self, rundir: Path, live: dict[str, Any]) -> None:
        """Add what a live run's status.json says now (called each second by the live
        updates)."""
        w = self._watches.get(rundir)  # a look without the lock: a sample may be skipped
        updated = live.get("updated")
        if w is None or not w.charts or not isinstance(updated, int | float):
            return
        if updated <= w.updated or updated <= w.charts["until"]:
            return
        w.updated = float(updated)
        res = live.get("resources") or {}
        done = sum(int(v) for k, v in (live.get("counts") or {}).items() if k in ENDED)
        w.samples.append(
            (float(updated), int(res.get("cores_used", 0)), int(res.get("gpus_used", 0)), done)
        )
        del w.samples[:-3600]  # an hour of samples at most

    def get(self, rundir: Path, life: str, ended: float | None) -> dict[str, Any]:
        """The charts of a run: read again when it ended since, or when it is live and the
        samples since are too few (nobody watched) or a while has passed."""
        w, lock = self._of(rundir)
        with lock:
            stale = not w.charts
            age = time.monotonic() - w.at
            if w.charts and life == Life.LIVE:
                missed = (time.time() - w.charts["until"]) > 2 * len(w.samples) + 10
                stale = missed or age > max(RECOMPUTE, 20 * w.cost)
            elif w.charts:
                stale = w.charts.get("ended") != ended
            if stale:
                started = time.monotonic()
                w.charts = series(rundir, ended=ended if life != Life.LIVE else None)
                w.charts["ended"] = ended
                w.cost = time.monotonic() - started
                w.at = time.monotonic()
                w.samples = []
                w.updated = 0.0
            out = dict(w.charts)
            out["live"] = [[round(t - w.charts["created"], 3), c, g, d] for t, c, g, d in w.samples]
            out["read_s"] = round(w.cost, 3)
            return out


def warm(cat: Catalog, charts: Charts, most: int = 5) -> None:
    """Read the charts of the newest ``most`` runs ahead of their first visit (a million
    attempts take seconds); runs that cannot be read are left to their page to report."""
    for rundir in list(cat.keys().values())[:most]:
        st = cat.summary(rundir)
        if "error" not in st:
            try:
                charts.get(rundir, st["life"], st.get("ended"))
            except StoreError:
                continue


def run_page(cat: Catalog, rundir: Path) -> dict[str, Any]:
    """The run page's numbers except the charts: the summary with its details (failures
    first), and the deadline and allocation end a live run's driver reported."""
    st = cat.summary(rundir, details=True)
    live = live_status(rundir) if st.get("life") == Life.LIVE else {}
    st["deadline"] = live.get("deadline")
    st["allocation_end"] = live.get("allocation_end")
    st["now"] = time.time()
    return st


def task_page(rundir: Path, task: int) -> dict[str, Any]:
    """Everything about one task: its row, story, attempts (placements in words), options,
    dependencies and dependents with their states, where it stands (``shoal explain``), its
    result (size and a preview) and which log files it has."""
    with Reader(rundir) as r:
        try:
            row = r.find(task)
        except StoreError as err:
            raise NotFound(str(err)) from None
        nodes = r.nodes()
        attempts = r.attempts(row.id)
        for a in attempts:
            a["where"] = placement_words(a["placement"], nodes)
        story = r.story(row.id)
        options = r.options(row.id)
        deps = [_brief(r, d) for d in row.deps[:200]]
        dependents = r.dependents(row.id)
        result = _result(r, row.id) if row.state == "succeeded" else None
    folder = rundir / "tasks" / str(row.id)
    logs = {k: (folder / v).stat().st_size for k, v in STREAMS.items() if (folder / v).is_file()}
    return {
        "task": row.as_dict(),
        "story": story,
        "attempts": attempts,
        "options": options,
        "deps": deps,
        "more_deps": max(0, len(row.deps) - 200),
        "dependents": dependents,
        "result": result,
        "logs": logs,
        "explain": why(rundir, str(row.id)),
        "ended": row.state in ENDED,
    }


def _brief(r: Reader, task: int) -> dict[str, Any]:
    try:
        row = r.find(task)
    except StoreError:
        return {"id": task, "name": "?", "state": "unknown"}
    return {"id": row.id, "name": row.name, "state": row.state}


def _result(r: Reader, task: int) -> dict[str, Any] | None:
    """A result's size, type and the start of its repr (not unpickled above a megabyte)."""
    size = r.result_size(task)
    if size is None:
        return None
    out: dict[str, Any] = {"size": size}
    if size > PREVIEW_BYTES:
        out["preview"] = None
        out["note"] = f"{size:,} bytes: too large to preview here (shoal result {task})"
        return out
    try:
        value = pickle.loads(r.result_bytes(task) or b"")
        text = repr(value)
        out["type"] = f"{type(value).__module__}.{type(value).__qualname__}"
    except Exception as err:  # a class this process cannot import, a broken file
        out["preview"] = None
        out["note"] = f"cannot be read here ({type(err).__name__}: {err})"
        return out
    out["preview"] = text[:PREVIEW]
    out["cut"] = len(text) > PREVIEW
    return out


def log_tail(rundir: Path, task: int, stream: str, offset: int | None) -> dict[str, Any]:
    """A task's ``stream`` (stdout, stderr or traceback) from ``offset`` on (None: its last
    :data:`TAIL` bytes): ``text``, the ``offset`` to ask from next, and whether the task
    ``ended`` (no more will come). A running attempt on the local backend writes to its
    worker's spool file, which is read instead."""
    if stream not in STREAMS:
        raise NotFound(f"no log {stream!r}: ask for one of {', '.join(STREAMS)}")
    with Reader(rundir) as r:
        try:
            row = r.find(task)
        except StoreError as err:
            raise NotFound(str(err)) from None
    ended = row.state in ENDED
    path = rundir / "tasks" / str(row.id) / STREAMS[stream]
    spool = None
    if not ended and stream != "traceback":
        from shoal.backends.local.worker_main import spool_of

        spools = spool_of(str(rundir / "workers"), row.id, row.attempts)
        spool = Path(spools[0 if stream == "stdout" else 1]) if spools else None
    source = spool or path
    try:
        size = source.stat().st_size
    except OSError:
        return {"text": "", "offset": 0, "ended": ended, "source": None}
    start = max(0, size - TAIL) if offset is None else min(max(0, offset), size)
    with open(source, "rb") as fh:
        fh.seek(start)
        data = fh.read(TAIL)
    return {
        "text": data.decode(errors="replace"),
        "offset": start + len(data),
        "skipped": start if offset is None else 0,
        "ended": ended,
        "source": "running attempt" if spool else "task folder",
    }


def graph(
    rundir: Path, group: bool | None, states: tuple[str, ...] = (), tag: str | None = None
) -> dict[str, Any]:
    """The run's graph for drawing, or a selection's (tasks in ``states``, or of ``tag``):
    boxes (tasks, or one per task name above 200 tasks) with their state, counts and layer,
    and edges with how many dependencies they carry."""
    d = dag(rundir, group=group, states=states, tag=tag)
    depth = levels(d)
    return {
        "grouped": d.grouped,
        "tasks": d.tasks,
        "boxes": [
            {
                "key": b.key,
                "label": b.label,
                "state": b.state,
                "counts": dict(b.states),
                "level": depth[b.key],
                "task": int(b.key[1:]) if not d.grouped else None,
            }
            for b in d.boxes.values()
        ],
        "edges": [[a, b, n] for (a, b), n in d.edges.items()],
        "colours": COLOURS,
    }


def changed(rundir: Path) -> tuple[Any, ...]:
    """What tells a client that a run changed: status.json's time and the database's."""
    try:
        status = os.stat(rundir / "status.json").st_mtime_ns
    except OSError:
        status = 0
    return (status, *_stamp(rundir / "shoal.db"))
