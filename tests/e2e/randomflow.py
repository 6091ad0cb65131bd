"""Randomized end-to-end tests: random workflows, run for real, checked against a reference.

How it works
------------
* ``flowgen.generate(seed, mode)`` makes a random *case* (``flowmodel.Case``): 40-120 tasks,
  mostly tiny Python tasks with commands and isolated tasks between them, each with a
  behaviour per execution (succeed, sleep, raise, exit, SIGKILL itself, hang past its timeout,
  fail then succeed), retry policies (``retries``, ``retry_on``, ``escalate``), resource
  shapes on a pretend node, priorities and tags; Responses (replace chains, detours,
  additions, ``stop_children``, ``stop_run``); rules (retry, submit, cancel, stop); a
  strategy; a stop barrier, with or without a resume; outside requests (cancel, retry,
  rerun); SIGKILLs of the driver followed by ``shoal.resume``.
* ``interp.expect(case)`` is the reference interpreter: serial, written from the README's
  promises, using no shoal code. It gives every task's final state (or the set of states the
  order of events may legitimately choose between), its result (through replacements), how
  many times it ran, and the state of the run.
* ``check(case, folder)`` runs the case through the real backend in a driver subprocess
  (``wf.run``; killed and resumed in crash cases; outside requests made while it goes), reads
  the run's ``shoal.db`` and the tasks' execution counts, and lists every disagreement.
* A failing case prints its seed, a one-line replay command, and, shrunk (tasks and features
  dropped while it still fails), ready-to-paste code for a regression test.

Replay and soak::

    python -m tests.e2e.randomflow --seed 123                  # one case, default prefetch
    python -m tests.e2e.randomflow --seed 123 --prefetch 0     # the same without prefetch
    python -m tests.e2e.randomflow --seed 123 --mode crash --shrink
    python -m tests.e2e.randomflow --soak 50 --mode basic      # seeds 0..49

Modes: ``basic`` (everything but outside requests and crashes), ``requests``, ``crash``,
``dask`` (on a loopback Dask cluster started for the purpose) and ``slurm``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .flowgen import KILLS, Mix, generate
from .flowmodel import (
    Case,
    Req,
    Resp,
    Rule,
    T,
    build,
    case_of,
    code,
    count_path,
    latch_path,
    t_of,
    to_json,
)
from .interp import Expected, Racy, expect

__all__ = [
    "Case",
    "Mix",
    "Racy",
    "Req",
    "Resp",
    "Rule",
    "T",
    "check",
    "expect",
    "generate",
    "replay_line",
    "shrink",
]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 150.0  # seconds a case may take before it counts as hung (they take 1-20 s)


# -- building and driving the real run (in the driver subprocess) --------------------------------
def _retry_rule(event: Any, ctl: Any) -> None:
    if not ctl.memory.get("done"):
        ctl.memory["done"] = True
        ctl.retry(event.task)


def _stop_rule(event: Any, ctl: Any) -> None:
    ctl.stop()


def _submit_rule(spec: str, folder: str) -> Callable[[Any, Any], None]:
    def submit(event: Any, ctl: Any) -> None:
        x = event.result
        ctl.submit(build(t_of(json.loads(spec)), {}, folder, [_plain(x)]))

    return submit


def _cancel_rule(tag: str, latch: str) -> Callable[[Any, Any], None]:
    def cancel(event: Any, ctl: Any) -> None:
        ctl.cancel(tag)
        Path(latch).touch()  # the gate may end only now: its dependent is cancelled first

    return cancel


def _plain(x: Any) -> Any:
    return x["stdout"] if isinstance(x, dict) else x


class Chain:
    """A strategy that submits its tasks one after the other, each with the result of the
    one before, until one does not succeed. (Imported by the worker side too: no shoal
    import at module level, so the base class is taken at construction.)"""

    def __new__(cls, chain: str, folder: str) -> Any:
        import shoal

        class ChainStrategy(shoal.Strategy):
            def __init__(self) -> None:
                self.chain = chain
                self.folder = folder

            def on_start(self, ctl: Any) -> None:
                ctl.memory["next"] = 1
                ctl.submit(build(self.specs()[0], {}, self.folder, []))

            def on_result(self, event: Any, ctl: Any) -> None:
                i = ctl.memory["next"]
                specs = self.specs()
                if event.state == "succeeded" and i < len(specs):
                    ctl.memory["next"] = i + 1
                    ctl.submit(build(specs[i], {}, self.folder, [_plain(event.result)]))
                else:
                    ctl.memory["next"] = len(specs)

            def done(self, ctl: Any) -> bool:
                return bool(ctl.memory.get("next", 0) >= len(self.specs()))

            def specs(self) -> list[T]:
                return [t_of(x) for x in json.loads(self.chain)]

        return ChainStrategy()


def materialize(case: Case, folder: str) -> Any:
    """The shoal workflow of a case."""
    import shoal

    refs: dict[str, Any] = {}
    with shoal.Workflow("rf") as wf:
        for t in case.tasks:
            refs[t.name] = build(t, refs, folder)
    for i, r in enumerate(case.rules):
        label = f"rule{i}-{r.kind}"
        if r.kind == "retry":
            wf.on("task-failed", name=r.on, label=label)(_retry_rule)
        elif r.kind == "stop":
            wf.on("task-started", name=r.on, label=label)(_stop_rule)
        elif r.kind == "submit":
            assert r.task is not None
            fn = _submit_rule(json.dumps(to_json(r.task)), folder)
            wf.on("task-succeeded", name=r.on, label=label)(fn)
        elif r.kind == "cancel":
            assert r.target is not None
            fn = _cancel_rule(f"cancel-{r.target}", latch_path(folder, r.on))
            wf.on("task-started", name=r.on, label=label)(fn)
    if case.chain:
        wf.add(Chain(json.dumps(to_json(case.chain)), folder))
    return wf


def drive(args: argparse.Namespace) -> None:
    """The driver subprocess: run a case (or resume its run) and exit."""
    import shoal

    opts: dict[str, Any] = {"progress": False}
    if args.prefetch is not None:
        opts["prefetch"] = args.prefetch
    if args.resume_run:
        shoal.resume(args.resume_run, **opts)
        return
    case = case_of(json.loads(Path(args.drive).read_text()))
    base = Path(args.drive).parent
    wf = materialize(case, str(base / "files"))
    if args.dask:
        from shoal.backends.dask import DaskBackend

        opts["backend"] = DaskBackend(scheduler_file=args.dask, wait_for=2)
    elif args.slurm:
        opts["backend"] = "slurm"
    else:
        opts["cpus"] = case.cpus
    wf.run(base=str(base / "runs"), **opts)


# -- watching the run (in the test process) ------------------------------------------------------
@dataclass
class Observed:
    run: str
    states: dict[str, str]
    results: dict[str, Any]
    execs: dict[str, int]
    problems: list[str] = field(default_factory=list)


def _db(rundir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{rundir / 'shoal.db'}?mode=ro", uri=True, timeout=30)


def state_of(rundir: Path, name: str) -> str | None:
    try:
        with _db(rundir) as c:
            row = c.execute("SELECT state FROM tasks WHERE name=?", (name,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def count_succeeded(rundir: Path) -> int:
    try:
        with _db(rundir) as c:
            return int(
                c.execute("SELECT COUNT(*) FROM tasks WHERE state='succeeded'").fetchone()[0]
            )
    except sqlite3.Error:
        return 0


def observe(rundir: Path, folder: Path) -> Observed:
    with _db(rundir) as c:
        rows = {
            r[0]: r[1:] for r in c.execute("SELECT id, name, state, alias FROM tasks").fetchall()
        }
        values = {r[0]: r[1:] for r in c.execute("SELECT task, value, path FROM results")}
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        rule_errors = c.execute("SELECT label, last_error FROM rules WHERE errors > 0").fetchall()
    obs = Observed(json.loads(meta.get("state", '"?"')), {}, {}, {})
    for label, err in rule_errors:
        obs.problems.append(f"rule {label} raised: {(err or '').strip().splitlines()[-1:]}")
    for tid, (name, state, _alias) in rows.items():
        if name in obs.states:
            obs.problems.append(f"two tasks are named {name!r}")
        obs.states[name] = state
        if state == "succeeded":
            obs.results[name] = _effective(tid, rows, values, rundir)
        n = count_path(str(folder), name)
        obs.execs[name] = Path(n).read_text().count("\n") if os.path.exists(n) else 0
    return obs


def _effective(tid: int, rows: dict[int, Any], values: dict[int, Any], rundir: Path) -> Any:
    seen = {tid}
    _, state, alias = rows[tid]
    while state == "succeeded" and alias is not None and alias not in seen:
        tid = alias
        seen.add(tid)
        _, state, alias = rows[tid]
    if state != "succeeded":
        return "!" + state
    blob, path = values.get(tid, (None, None))
    if blob is None and path:
        blob = (rundir / path).read_bytes() if not os.path.isabs(path) else Path(path).read_bytes()
    if blob is None:
        return "!no result"
    v = pickle.loads(blob)
    if isinstance(v, dict):
        v = {k: x for k, x in v.items() if k != "dir"}
    return v


def compare(
    exp: Expected,
    obs: Observed,
    crash: bool,
    execs: bool = True,
    timed: frozenset[str] = frozenset(),
) -> list[str]:
    """The disagreements; ``timed``: tasks with a timeout."""
    out = list(obs.problems)
    for name in sorted(set(exp.states) | set(obs.states), key=_natural):
        want = exp.states.get(name)
        got = obs.states.get(name)
        if want is None:
            out.append(f"{name}: not expected, but it is {got}")
            continue
        if got is None:
            out.append(f"{name}: missing, expected {'|'.join(sorted(want))}")
            continue
        if got not in want:
            out.append(f"{name}: {got}, expected {'|'.join(sorted(want))}")
            continue
        if name in exp.results and obs.results.get(name) != exp.results[name]:
            out.append(f"{name}: result {obs.results.get(name)!r}, expected {exp.results[name]!r}")
        e, o = exp.execs.get(name, 0), obs.execs.get(name, 0)
        # A lost attempt may or may not have run the task's code, and a timeout counts from
        # the start of the attempt, not of the code (a worker may still be starting).
        if crash:
            wrong = (o > 0) != (e > 0)
        elif name in timed:
            wrong = (o > 0) != (e > 0) or o > e
        else:
            wrong = o != e
        if execs and wrong:
            out.append(f"{name}: ran {o} times, expected {e}")
    if obs.run not in exp.run:
        out.append(f"run: {obs.run}, expected {'|'.join(sorted(exp.run))}")
    return out


def _natural(name: str) -> tuple[Any, ...]:
    head = name.split(".")[0]
    digits = "".join(ch for ch in head if ch.isdigit())
    return (head.rstrip("0123456789"), int(digits) if digits else -1, name)


# -- one case, end to end ------------------------------------------------------------------------
@dataclass
class Setup:
    """How to run: prefetch (None: shoal's default), the backend, a time limit."""

    prefetch: int | None = None
    dask: str | None = None  # a scheduler file
    slurm: bool = False
    timeout: float = RUN_TIMEOUT


class Driver:
    def __init__(self, folder: Path, setup: Setup) -> None:
        self.folder = folder
        self.setup = setup
        self.proc: subprocess.Popen[bytes] | None = None
        self.errors: list[str] = []

    def start(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "tests.e2e.randomflow", *args]
        if self.setup.prefetch is not None:
            cmd += ["--prefetch", str(self.setup.prefetch)]
        if self.setup.dask:
            cmd += ["--dask", self.setup.dask]
        if self.setup.slurm:
            cmd += ["--slurm"]
        env = dict(os.environ)
        # Open MPI refuses to run as root without these (as tests/conftest.py sets)
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
        )
        self.log = open(self.folder / f"driver{len(self.errors)}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def finish(self, deadline: float) -> bool:
        """Wait for the driver; False if it hung (it is then killed)."""
        assert self.proc is not None
        try:
            self.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            self.errors.append("the run hung: the driver was killed after the time limit")
            return False
        self.log.close()
        if self.proc.returncode != 0:
            tail = (self.folder / self.log.name).read_text(errors="replace").strip()
            lines = tail.splitlines()[-6:]
            self.errors.append(
                f"the driver exited with {self.proc.returncode}: " + " / ".join(lines)
            )
        return True


def _wait(what: Callable[[], bool], drv: Driver, until: float) -> bool:
    while time.monotonic() < until:
        if what():
            return True
        if not drv.alive():
            return what()
        time.sleep(0.01)
    return False


def _rundir(runs: Path, drv: Driver, until: float) -> Path | None:
    found: list[Path] = []

    def there() -> bool:
        found[:] = list(runs.glob("rf-*/shoal.db"))
        return bool(found)

    _wait(there, drv, until)
    return found[0].parent if found else None


def _requests(case: Case, rundir: Path, files: Path, drv: Driver, until: float) -> list[str]:
    """Make each request once its gate runs (and its target failed or succeeded, for a
    retry or a rerun), then open the gate's latch. Requests are served in any order: one
    gate may have to end before another can start."""
    import shoal

    out = []
    todo = list(case.requests)
    want = {"cancel": None, "retry": "failed", "rerun": "succeeded"}

    def ready(q: Req) -> bool:
        if state_of(rundir, q.gate) != "running":
            return False
        w = want[q.kind]
        return w is None or state_of(rundir, q.target) == w

    while todo and time.monotonic() < until and drv.alive():
        for q in [q for q in todo if ready(q)]:
            a = shoal.attach(rundir)
            rid = getattr(a, q.kind)(q.target)
            answer = a.answer(rid, timeout=60)
            if answer is None or answer.startswith("refused") or answer.startswith("0 task"):
                out.append(f"request {q.kind} {q.target}: answered {answer!r}")
            Path(latch_path(str(files), q.gate)).touch()
            todo.remove(q)
        time.sleep(0.01)
    for q in todo:
        out.append(
            f"request {q.kind} {q.target}: never saw gate {q.gate} running"
            f" ({state_of(rundir, q.gate)}) with {q.target} {state_of(rundir, q.target)}"
        )
        Path(latch_path(str(files), q.gate)).touch()
    return out


def check(case: Case, folder: Path, setup: Setup | None = None) -> list[str]:
    """Run ``case`` for real in ``folder`` and list how it disagrees with the reference."""
    setup = setup or Setup()
    exp = expect(case)
    folder.mkdir(parents=True, exist_ok=True)
    files, runs = folder / "files", folder / "runs"
    files.mkdir(exist_ok=True)
    runs.mkdir(exist_ok=True)
    (folder / "case.json").write_text(json.dumps(to_json(case)))
    until = time.monotonic() + setup.timeout
    drv = Driver(folder, setup)
    drv.start("--drive", str(folder / "case.json"))
    rundir = _rundir(runs, drv, until)
    if rundir is None:
        drv.finish(until)
        return [*drv.errors, "no run directory appeared"]
    problems: list[str] = []
    if case.crash:
        rng = random.Random(case.seed * 7919 + 1)
        goal = sum(1 for s in exp.states.values() if s == {"succeeded"})
        for _ in range(rng.randint(1, KILLS)):
            at = rng.randint(1, max(1, goal * 3 // 4))
            if (
                not _wait(lambda at=at: count_succeeded(rundir) >= at, drv, until)
                or not drv.alive()
            ):
                break
            drv.kill()
            drv.start("--resume-run", str(rundir))
    if case.requests:
        problems += _requests(case, rundir, files, drv, until)
    if not drv.finish(until):
        return [*drv.errors, *problems]
    if exp.stopped is not None:
        first = Expected(exp.stopped, {}, {}, frozenset({"stopped"}))
        problems += [
            f"before resume: {p}" for p in compare(first, observe(rundir, files), False, False)
        ]
        drv.start("--resume-run", str(rundir))
        drv.finish(until)
    problems = [*drv.errors, *problems]
    if drv.errors and not any("exited" in e for e in drv.errors):
        return problems
    timed = frozenset(t.name for t in case.all_tasks() if t.timeout is not None)
    return problems + compare(exp, observe(rundir, files), case.crash, True, timed) + views(rundir)


def views(rundir: Path) -> list[str]:
    """The read-only views the CLI and the dashboard show (store/runs.py, Reader.table,
    Reader.links, store/dag.py, ``shoal explain``) agree with the store's own rows."""
    from collections import Counter

    from shoal.store.dag import dag
    from shoal.store.explain import why
    from shoal.store.queries import Reader
    from shoal.store.runs import Life, summary

    out: list[str] = []
    with _db(rundir) as c:
        rows = {i: (s, json.loads(d)) for i, s, d in c.execute("SELECT id, state, deps FROM tasks")}
    st = summary(rundir)
    states = Counter(s for s, _ in rows.values())
    if st["counts"] != dict(states):
        out.append(f"views: summary counts {st['counts']}, the rows say {dict(states)}")
    if st["life"] not in (Life.FINISHED, Life.INTERRUPTED):
        out.append(f"views: an ended run reads as {st['life']}")
    with Reader(rundir) as r:
        for state in states:
            got, total = r.table((state,))
            want = sorted(i for i, (s, _) in rows.items() if s == state)
            if [t["id"] for t in got] != want or total != len(want):
                out.append(f"views: table of {state} has {[t['id'] for t in got]}, want {want}")
        links = {i: (s, deps) for i, _, s, deps in r.links()}
    if links != rows:
        out.append("views: links() disagree with the rows")
    g = dag(rundir)
    if sum(sum(b.states.values()) for b in g.boxes.values()) != len(rows):
        out.append("views: the graph's boxes do not hold every task once")
    for tid, (state, _) in rows.items():
        first = why(rundir, str(tid))[0]
        if f": {state}" not in first:
            out.append(f"views: explain of #{tid} says {first!r}, the row says {state}")
    return out + dashboard_views(rundir, rows) + mcp_views(rundir, rows)


def dashboard_views(rundir: Path, rows: dict[int, tuple[str, list[int]]]) -> list[str]:
    """The dashboard's pages (shoal.dashboard.data) agree with the store: the charts count
    every attempt and how it ended, and each task page its state, dependencies and
    dependents."""
    from collections import Counter

    from shoal.dashboard import data

    out: list[str] = []
    page = data.run_page(data.Catalog(rundir), rundir)
    charts = data.Charts().get(rundir, page["life"], page["ended"])
    with _db(rundir) as c:
        ended = Counter(
            o
            for (o,) in c.execute(
                "SELECT outcome FROM attempts WHERE COALESCE(started, dispatched) IS NOT NULL"
            )
        )
    if charts["attempts"] != sum(ended.values()):
        out.append(f"dashboard: charts read {charts['attempts']} attempts, the store has {ended}")
    for what in ("succeeded", "failed"):
        if sum(charts[what]) != ended[what]:
            out.append(f"dashboard: charts count {sum(charts[what])} {what}, store {ended[what]}")
    if sum(t["attempts"] for t in charts["tags"]) < min(sum(ended.values()), 1):
        out.append("dashboard: no tag statistics for a run with attempts")
    for tid in sorted(rows)[:: max(1, len(rows) // 5)]:
        t = data.task_page(rundir, tid)
        state, deps = rows[tid]
        needed_by = sorted(i for i, (_, d) in rows.items() if tid in d)
        if t["task"]["state"] != state or [d["id"] for d in t["deps"]] != deps[:200]:
            out.append(f"dashboard: task page of #{tid} says {t['task']}, the row {rows[tid]}")
        if [d["id"] for d in t["dependents"]] != needed_by[:200]:
            out.append(
                f"dashboard: #{tid} is needed by {needed_by}, the page says {t['dependents']}"
            )
    return out


def mcp_views(rundir: Path, rows: dict[int, tuple[str, list[int]]]) -> list[str]:
    """What an agent reads through the MCP tools (shoal.mcp.tools, the server's bodies)
    agrees with the store: every task's state, page by page; the counts; the log of each
    failed task."""
    from collections import Counter

    from shoal.mcp import tools
    from shoal.mcp.guard import Guard

    out: list[str] = []
    g = Guard(rundir.parent.resolve())
    seen: dict[int, str] = {}
    offset = 0
    while True:
        page = tools.tasks(g, rundir.name, [], None, None, "id", 97, offset)
        seen.update({t["id"]: t["state"] for t in page["tasks"]})
        offset += 97
        if offset >= (page["total"] or 0):
            break
    truth = {tid: state for tid, (state, _) in rows.items()}
    if seen != truth:
        wrong = sorted(i for i in set(seen) | set(truth) if seen.get(i) != truth.get(i))[:5]
        out.append(f"mcp: tasks pages differ from the store at {wrong}")
    counts = tools.status(g, rundir.name)["counts"]
    if counts != dict(Counter(truth.values())):
        out.append(f"mcp: status counts {counts}, the store {dict(Counter(truth.values()))}")
    for tid in [i for i, s in truth.items() if s == "failed"][:3]:
        log = tools.logs(g, rundir.name, str(tid))
        if log["state"] != "failed" or not log["attempts"]:
            out.append(f"mcp: logs of failed #{tid} say {log['state']}, {log['attempts']}")
    return out


# -- shrinking -----------------------------------------------------------------------------------
def without(case: Case, drop: set[str]) -> Case:
    """The case without the top-level tasks ``drop`` (and what only they needed)."""

    def keep(t: T) -> T:
        return replace(
            t,
            deps=[d for d in t.deps if d not in drop],
            after=[d for d in t.after if d not in drop],
        )

    tasks = [keep(t) for t in case.tasks if t.name not in drop]
    rules = [r for r in case.rules if r.on not in drop and r.target not in drop]
    reqs = [q for q in case.requests if q.gate not in drop and q.target not in drop]
    return replace(case, tasks=tasks, rules=rules, requests=reqs)


def _valid(case: Case) -> bool:
    if not case.tasks:
        return False
    try:
        expect(case)
    except (Racy, KeyError, AssertionError):
        return False
    return True


def kinds(problems: list[str]) -> set[str]:
    """What sort of disagreements: a task's state, result or run count, the run's state, a
    hang, a driver that crashed, a request. A shrunk case must keep one of the same sort."""
    out = set()
    for p in problems:
        if p.startswith("the run hung"):
            out.add("hung")
        elif p.startswith("the driver exited"):
            out.add("driver")
        elif p.startswith("request"):
            out.add("request")
        elif p.startswith("run:"):
            out.add("run")
        elif ": result " in p:
            out.add("result")
        elif ": ran " in p:
            out.add("ran")
        elif p.startswith("rule"):
            out.add("rule")
        else:
            out.add("state")
    return out


def shrink(
    case: Case,
    fails: Callable[[Case], list[str]],
    budget: float = 600.0,
    say: Callable[[str], None] = print,
) -> Case:
    """A smaller case that still fails in the same way (the same sort of problem, see
    :func:`kinds`): ddmin over the tasks, then fewer features, then simpler tasks."""
    end = time.monotonic() + budget
    want = kinds(fails(case)) if time.monotonic() < end else set()
    if not want:
        say("  it does not fail again: nothing to shrink")
        return case
    say(f"  it fails with {sorted(want)}")

    def attempt(c: Case) -> bool:
        if time.monotonic() > end or not _valid(c):
            return False
        ok = bool(kinds(fails(c)) & want)
        if ok:
            say(f"  shrunk to {len(c.tasks)} tasks")
        return ok

    chunk = max(1, len(case.tasks) // 2)
    while chunk >= 1 and time.monotonic() < end:
        i = 0
        changed = False
        while i < len(case.tasks) and time.monotonic() < end:
            drop = {t.name for t in case.tasks[i : i + chunk]}
            smaller = without(case, drop)
            if attempt(smaller):
                case = smaller
                changed = True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    for part in ("rules", "chain", "requests"):
        if getattr(case, part) and attempt(replace(case, **{part: []})):
            case = replace(case, **{part: []})
    simpler: list[Callable[[T], T]] = [
        lambda t: replace(t, tags=[], priority=0),
        lambda t: replace(t, resp=None),
        lambda t: replace(t, cpus=1),
        lambda t: replace(t, retries=0, retry_on=[], escalate=None),
        lambda t: replace(t, acts=["ok"], timeout=None, retries=0, retry_on=[], escalate=None),
        lambda t: replace(t, kind="py"),
    ]
    for f in simpler:
        for i in range(len(case.tasks)):
            t = case.tasks[i]
            s = f(t)
            if s != t and time.monotonic() < end:
                c = replace(case, tasks=[*case.tasks[:i], s, *case.tasks[i + 1 :]])
                if attempt(c):
                    case = c
    return case


def replay_line(seed: int, mode: str = "basic", setup: Setup | None = None) -> str:
    setup = setup or Setup()
    extra = f" --mode {mode}" if mode != "basic" else ""
    if setup.prefetch is not None:
        extra += f" --prefetch {setup.prefetch}"
    return f"cd {ROOT} && PYTHONPATH=src python -m tests.e2e.randomflow --seed {seed}{extra}"


def regression(case: Case, setup: Setup, problems: list[str]) -> str:
    """Ready-to-paste code of a regression test for a (shrunk) failing case."""
    pf = f"prefetch={setup.prefetch}" if setup.prefetch is not None else ""
    lines = [
        f"def test_randomflow_seed_{case.seed}(tmp_path: Path) -> None:",
        f'    """Found by tests/e2e/randomflow.py; it failed with: {problems[0][:60]}..."""'
        if problems
        else '    """Found by tests/e2e/randomflow.py."""',
        "    case = " + code(case, 4),
        f"    assert check(case, tmp_path, Setup({pf})) == []",
    ]
    return (
        "from pathlib import Path\n\n"
        "from .randomflow import Case, Req, Resp, Rule, Setup, T, check\n\n\n" + "\n".join(lines)
    )


# -- the command line ----------------------------------------------------------------------------
def run_seed(
    seed: int, mode: str, setup: Setup, keep: Path | None = None, quiet: bool = False
) -> list[str]:
    case = generate(seed, mode)
    folder = Path(tempfile.mkdtemp(prefix=f"rf-{seed}-", dir=keep))
    t0 = time.monotonic()
    problems = check(case, folder, setup)
    if not quiet:
        status = "ok" if not problems else f"FAILED ({len(problems)} problems)"
        print(
            f"seed {seed} ({mode}, {len(case.tasks)} tasks, prefetch {setup.prefetch}): {status}"
            f" in {time.monotonic() - t0:.1f} s"
        )
    if problems:
        print(f"  folder: {folder}")
        for p in problems[:15]:
            print("  " + p)
        print("  replay: " + replay_line(seed, mode, setup))
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.e2e.randomflow", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--seed", type=int)
    ap.add_argument("--soak", type=int, help="run this many seeds, from --start")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--mode", default="basic")
    ap.add_argument("--prefetch", type=int)
    ap.add_argument("--shrink", action="store_true", help="shrink a failing case")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of shrinking")
    ap.add_argument("--print", action="store_true", help="print the case as code and exit")
    ap.add_argument("--keep", type=Path, help="folder for the cases' files")
    ap.add_argument("--timeout", type=float, default=RUN_TIMEOUT, help="seconds a case may take")
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    ap.add_argument("--resume-run", help=argparse.SUPPRESS)
    ap.add_argument("--dask", help=argparse.SUPPRESS)
    ap.add_argument("--slurm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.drive or args.resume_run:
        drive(args)
        return 0
    cluster = None
    setup = Setup(prefetch=args.prefetch, timeout=args.timeout)
    try:
        if args.mode == "dask":
            from tests.backends.dask_fixtures import start_cluster

            cluster = start_cluster(Path(tempfile.mkdtemp(prefix="rf-dask-")))
            setup.dask = str(cluster.scheduler_file)
        elif args.mode == "slurm":
            setup.slurm = True
        if args.seed is not None and args.print:
            print(code(generate(args.seed, args.mode)))
            return 0
        if args.seed is not None:
            problems = run_seed(args.seed, args.mode, setup, args.keep)
            if problems and args.shrink:
                small = shrink_seed(args.seed, args.mode, setup, args.budget)
                print(regression(small, setup, problems))
            return 1 if problems else 0
        if args.soak:
            bad = []
            for seed in range(args.start, args.start + args.soak):
                if run_seed(seed, args.mode, setup, args.keep):
                    bad.append(seed)
            print(f"{args.soak} cases, {len(bad)} failed: {bad}")
            return 1 if bad else 0
        ap.print_help()
        return 2
    finally:
        if cluster is not None:
            from tests.backends.dask_fixtures import stop_cluster

            stop_cluster(cluster)


def shrink_seed(seed: int, mode: str, setup: Setup, budget: float, tries: int = 2) -> Case:
    case = generate(seed, mode)

    def fails(c: Case) -> list[str]:
        for _ in range(tries):  # failures of races come and go: look more than once
            with tempfile.TemporaryDirectory(prefix="rf-shrink-") as d:
                problems = check(c, Path(d), setup)
            if problems:
                return problems
        return []

    print(f"shrinking seed {seed} ({len(case.tasks)} tasks, {budget:.0f} s at most) ...")
    return shrink(case, fails, budget)


if __name__ == "__main__":
    sys.exit(main())
