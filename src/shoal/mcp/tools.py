"""What the MCP tools do, as plain functions of a :class:`~shoal.mcp.guard.Guard` and their
arguments, returning JSON data with the fields of the CLI's ``--json`` (the server in
:mod:`shoal.mcp.server` only wraps them). Nothing here runs Python from a tool call: config
files are read without importing their functions, unless every function they name was
registered by the server's own script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shoal.errors import DefinitionError, ShoalError
from shoal.mcp.guard import Guard, Refused
from shoal.store.queries import Reader
from shoal.store.runs import find_runs, summary

LOG_BYTES = 16_000  # the tail of a log a tool returns
INLINE = ".shoal-mcp"  # where inline YAML is written, under the base, to be run from a file


def list_runs(g: Guard) -> list[dict[str, Any]]:
    """Every run under the base, newest first (``shoal runs --json``)."""
    return [
        {**_jsonable(summary(d)), "folder": str(d.relative_to(g.base))}
        for d in find_runs(g.base, 3)
    ]


def status(g: Guard, run: str | None) -> dict[str, Any]:
    d = g.run(run)
    return {**_jsonable(summary(d, details=True)), "folder": str(d.relative_to(g.base))}


def tasks(
    g: Guard,
    run: str | None,
    states: list[str],
    name: str | None,
    tag: str | None,
    sort: str,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    from shoal.core.states import State

    known = {s.value for s in State}
    for s in states:
        if s not in known:
            raise Refused(
                "bad_argument",
                f"unknown state {s!r}",
                "states",
                f"use some of: {', '.join(sorted(known))}",
            )
    if not 1 <= limit <= 1000 or offset < 0:
        raise Refused(
            "bad_argument",
            f"limit {limit}, offset {offset}",
            "limit",
            "give 1 <= limit <= 1000 and offset >= 0",
        )
    d = g.run(run)
    with Reader(d) as r:
        try:
            rows, total = r.table(tuple(states), name, tag, sort=sort, limit=limit, offset=offset)
            rows = [{**row, "attempts": r.attempts(row["id"])} for row in rows]  # as the CLI
        except ShoalError as err:
            raise Refused(
                "bad_argument",
                str(err),
                "sort",
                "sort by id, name, state, attempts, start or runtime (-runtime: largest first)",
            ) from None
    return {"run": str(d), "total": total, "offset": offset, "tasks": _jsonable(rows)}


def _task(r: Reader, task: str) -> Any:
    try:
        return r.find(task)
    except ShoalError as err:
        raise Refused(
            "not_found", str(err), "task", "give a task id or a unique name (tasks lists them)"
        ) from None


def logs(g: Guard, run: str | None, task: str) -> dict[str, Any]:
    """A task's story, attempts, and the tails of its stdout, stderr and traceback."""
    d = g.run(run)
    with Reader(d) as r:
        row = _task(r, task)
        out: dict[str, Any] = {
            "task": row.id,
            "name": row.name,
            "state": row.state,
            "reason": row.reason,
            "story": r.story(row.id),
            "attempts": r.attempts(row.id),
        }
    folder = d / "tasks" / str(row.id)
    for stream in ("stdout", "stderr", "traceback"):
        out[stream] = _tail(folder / stream)
    return dict(_jsonable(out))


def _tail(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - LOG_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return None


def result(g: Guard, run: str | None, task: str) -> dict[str, Any]:
    from shoal.runtime.imports import restored

    d = g.run(run)
    with Reader(d) as r:
        row = _task(r, task)
        if row.state != "succeeded":
            raise Refused(
                "not_finished",
                f"task #{row.id} {row.name} is {row.state}"
                + (f": {row.reason}" if row.reason else ""),
                "task",
                "logs shows why; retry runs a failed task again",
            )
        with restored(r.meta()):
            value = r.result(row.id)
    return {"task": row.id, "name": row.name, "result": _jsonable(value)}


def explain(g: Guard, run: str | None, task: str) -> dict[str, Any]:
    from shoal.store.explain import why

    d = g.run(run)
    try:
        return {"lines": why(d, task)}
    except ShoalError as err:
        raise Refused("not_found", str(err), "task", "give a task id or a unique name") from None


def report(g: Guard, run: str | None) -> dict[str, Any]:
    """Write the run's HTML report; its summary numbers and the PNG figures' paths."""
    from shoal.report.build import report as build

    d = g.run(run)
    path = build(d)
    st = summary(d, details=True)
    numbers = {k: st.get(k) for k in ("state", "total", "counts", "duration", "throughput")}
    figures = sorted(str(p) for p in path.parent.glob("*.png"))
    return dict(_jsonable({"html": str(path), "figures": figures, **numbers}))


def source(g: Guard, file: str | None, yaml_text: str | None) -> Path:
    """The config file a plan or a submission reads: ``file`` under the base, or inline
    YAML written to a file there (so the run records where it came from)."""
    if bool(file) == bool(yaml_text):
        raise Refused(
            "bad_argument",
            "give a config file or inline YAML (one of them)",
            "file",
            "file='sweep.yaml' or yaml='groups: ...'",
        )
    if file:
        path = g.path(file, "file")
        if path.suffix.lower() not in (".yaml", ".yml", ".json", ".toml"):
            raise Refused(
                "bad_argument",
                f"{file!r} is not a config file",
                "file",
                "give a .yaml, .yml, .json or .toml ensemble file",
            )
        return path
    import hashlib

    assert yaml_text is not None
    folder = g.base / INLINE if g.write else _scratch()  # a read-only server writes nothing
    folder.mkdir(exist_ok=True)
    digest = hashlib.sha256(yaml_text.encode()).hexdigest()[:12]
    path = folder / f"inline-{digest}.yaml"
    path.write_text(yaml_text)
    return path


_SCRATCH: list[Path] = []


def _scratch() -> Path:
    """A private folder of this server's, outside the base, for inline YAML to plan."""
    import tempfile

    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="shoal-mcp-")))
    return _SCRATCH[0]


def plan(g: Guard, file: str | None, yaml_text: str | None, first: int) -> dict[str, Any]:
    """What a config file would run (no code of its functions runs)."""
    from shoal.config import load

    path = source(g, file, yaml_text)
    try:
        planned = load(path, imports=False).plan(first=first)
    except DefinitionError as err:
        raise Refused(
            "bad_config",
            str(err),
            "file" if file else "yaml",
            "fix the file; read the resource shoal://docs/config",
        ) from None
    return dict(_jsonable({"file": str(path), **planned}))


def ensemble(g: Guard, path: Path, registered: set[str], where: str) -> Any:
    """The ensemble of a config file, imported only when every function it names was
    registered by the server's script (no other Python runs from a tool call)."""
    from shoal.config import load

    try:
        dry = load(path, imports=False)
        named = sorted({gr.function for gr in dry.groups.values() if gr.function})
        foreign = [f for f in named if f not in registered]
        if foreign:
            raise Refused(
                "not_allowed",
                f"the file names Python functions {foreign}, which "
                "this server's script did not register",
                where,
                "use command groups, or functions the server offers (see shoal://functions)",
            )
        return load(path) if named else dry
    except DefinitionError as err:
        raise Refused(
            "bad_config", str(err), where, "fix the file; read the resource shoal://docs/config"
        ) from None


def resume(g: Guard, run: str | None) -> tuple[Path, subprocess.Popen[bytes]]:
    """Start ``shoal resume RUN`` as a driver of its own: requests queued while no driver
    ran (retry, rerun, submit) are carried out, and unfinished tasks run."""
    from shoal.runtime.requests import attach

    d = g.run(run)
    if attach(d).live:
        raise Refused(
            "refused",
            f"a driver runs {d.name} already",
            "run",
            "wait for it (wait), or stop it first (stop)",
        )
    proc, _ = _driver(g, ["resume", str(d)])
    return d, proc


def start(g: Guard, path: Path) -> Path:
    """Start ``shoal run FILE`` as a driver of its own (it outlives this call and this
    server), in the base folder; the run directory once it exists."""
    before = set(find_runs(g.base, 3))
    proc, log = _driver(g, ["run", str(path)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [d for d in find_runs(g.base, 3) if d not in before]
        mine = [d for d in new if summary(d).get("pid") == proc.pid]
        if mine:
            return mine[0]
        if proc.poll() is not None:
            said = log.read_text(errors="replace")[-1500:]
            raise Refused(
                "run_failed",
                f"the run did not start: {said}",
                "file",
                "fix what the message says; plan checks a file first",
            )
        time.sleep(0.1)
    raise Refused(
        "run_failed", "no run directory appeared within 60 s", "file", f"see the driver's log {log}"
    )


def _driver(g: Guard, verb: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """A shoal driver in a session of its own, in the base folder (it outlives this server),
    with the folders of the server's registered functions on its path; its log file."""
    folder = g.base / INLINE
    folder.mkdir(exist_ok=True)
    log = folder / f"driver-{os.getpid()}-{time.time_ns()}.log"
    env = dict(os.environ)
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", *verb],
            cwd=g.base,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return proc, log


def into(g: Guard, d: Path, ens: Any) -> dict[str, Any]:
    """Add the ensemble's tasks to run ``d`` (live or stopped) through its requests."""
    from shoal.config.build import workflow
    from shoal.runtime.requests import attach, check_submit

    wf = workflow(ens)
    try:
        check_submit(d, [wf])
    except DefinitionError as err:
        raise Refused("bad_config", str(err), "file", "ask for less than a node holds") from None
    a = attach(d)
    rid = a.submit(wf)
    return {
        "run": str(d),
        "request": rid,
        "answer": a.answer(rid, 5.0 if a.live else 0),
        "live": a.live,
    }


def control(g: Guard, run: str | None, verb: str, **given: Any) -> dict[str, Any]:
    """retry, rerun, cancel or stop, through the run's requests (as the CLI does)."""
    from shoal.runtime.requests import act

    d = g.run(run)
    try:
        a, rid = act(d, verb, given)
    except ShoalError as err:
        raise Refused("refused", str(err), verb, "status and tasks show what can be done") from None
    answer = a.answer(rid, 5.0 if a.live else 0)
    return {"run": str(d), "request": rid, "answer": answer, "live": a.live}


def _jsonable(value: Any) -> Any:
    """JSON data (numbers, strings, lists, dicts); anything else as its repr."""
    import json

    return json.loads(json.dumps(value, default=repr))
