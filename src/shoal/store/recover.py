"""Reading a run back from its store, to resume it: the store is the truth.

:func:`load` returns everything a new driver needs: the records (the tasks as plain data, in
id order), their last recorded states and attempt counts, the extra dependencies Responses
added (gates), replacements (aliases), the functions, the rules and strategies with their
memory, and the run's settings. Attempts that were in flight when the driver died are marked
``lost`` (in one transaction) before anything else happens.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.core.states import State
from shoal.errors import StoreError
from shoal.spec.lower import Plan, Record
from shoal.spec.options import Options
from shoal.spec.retry import undescribe
from shoal.store.schema import VERSION, connect


@dataclass
class Snapshot:
    name: str
    meta: dict[str, Any]
    plan: Plan
    states: list[State]
    attempts: list[int]
    gates: list[tuple[int, tuple[int, ...]]]
    aliases: dict[int, int]
    rules: list[tuple[str, str, bytes | None, bytes | None]]  # label, kind, payload, memory
    origins: list[str | None] = field(default_factory=list)
    gate_of: dict[int, tuple[int, ...]] = field(default_factory=dict)
    lost: int = 0  # attempts marked lost


def _options(text: str, name: str, tags: list[str]) -> Options:
    o = json.loads(text)
    return Options(
        name=name,
        cpus=o["cpus"],
        gpus=o["gpus"],
        ranks=o["ranks"],
        memory=o["memory"],
        timeout=o["timeout"],
        priority=o["priority"],
        tags=tuple(tags),
        isolate=o["isolate"],
        retry=undescribe(o.get("retry")),
        estimate=o.get("estimate"),
        tolerate=bool(o.get("tolerate", False)),  # stored since session 17
    )


def damaged(path: Path, why: str) -> StoreError:
    return StoreError(
        f"the store {path} is damaged ({why}); shoal does not resume a damaged store, which "
        "could run tasks again or lose results. Keep a copy of the run directory; "
        f"`sqlite3 {path} .recover` may save what it holds; to get the results, run the "
        "workflow again (a new run directory)."
    )


def verify(rundir: Path) -> None:
    """Refuse a store that SQLite finds damaged (``PRAGMA quick_check``: the structure of
    every page and index; a truncated file, a torn page), before a resume reads anything."""
    path = Path(rundir) / "shoal.db"
    conn = connect(path, readonly=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as err:
        raise damaged(path, str(err)) from None
    finally:
        conn.close()
    if rows != ["ok"]:
        raise damaged(path, "; ".join(map(str, rows)))


def load(rundir: Path) -> Snapshot:
    """Read the run in ``rundir`` (see the module docstring). A damaged store, one SQLite
    finds damaged or one holding what shoal never writes (a flipped bit in a state), is
    refused with a StoreError that says so."""
    path = Path(rundir) / "shoal.db"
    if not path.exists():
        raise StoreError(
            f"no shoal database at {path}: give a run directory (a folder named "
            "<workflow>-<timestamp> holding shoal.db)"
        )
    conn = connect(path)
    try:
        return _load(conn, path)
    except sqlite3.Error as err:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.DatabaseError) and "malformed" in str(err):
            raise damaged(path, str(err)) from None
        raise StoreError(f"cannot read the store {path}: {err}") from None
    except (ValueError, KeyError, TypeError, IndexError) as err:
        why = f"it holds what shoal never writes: {type(err).__name__}: {err}"
        raise damaged(path, why) from None
    finally:
        conn.close()


def _load(conn: sqlite3.Connection, path: Path) -> Snapshot:
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if int(meta.get("schema", 0)) != VERSION:
        raise StoreError(
            f"{path} was written by another version of shoal (schema {meta.get('schema')}, "
            f"this one reads {VERSION}); resume it with that version"
        )
    in_flight, last_attempt, lost = _mark_lost(conn)
    functions = [
        (name, bytes(payload))
        for _, name, payload in conn.execute("SELECT id, name, payload FROM functions ORDER BY id")
    ]
    t = _read_tasks(conn, path, in_flight, last_attempt)
    gates = _gates(t.records, t.gate_of, t.first_of) if t.gate_of else []
    rules = [
        (label, "strategy" if trigger == "strategy" else "rule", payload, memory)
        for label, trigger, payload, memory in conn.execute(
            "SELECT label, trigger, payload, memory FROM rules ORDER BY position"
        )
    ]
    name = str(meta.get("name", "run"))
    plan = Plan(name, t.records, functions, 0)
    return Snapshot(
        name,
        meta,
        plan,
        t.states,
        t.attempts,
        gates,
        t.aliases,
        rules,
        origins=t.origins,
        gate_of=t.gate_of,
        lost=lost,
    )


def _mark_lost(conn: sqlite3.Connection) -> tuple[dict[int, int], dict[int, int], int]:
    """Mark the attempts in flight when the driver stopped ``lost`` (one transaction).

    Returns the last attempt in flight and the last attempt of each task, and how many were
    marked. A queued task's row still says "pending" (the writer skips the waiting states), so
    the attempts table, not the row, has its last attempt number and says that it was handed
    out.
    """
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    in_flight = dict(
        conn.execute("SELECT task, MAX(attempt) FROM attempts WHERE outcome IS NULL GROUP BY task")
    )
    last_attempt = dict(conn.execute("SELECT task, MAX(attempt) FROM attempts GROUP BY task"))
    lost: int = conn.execute(
        "UPDATE attempts SET outcome='lost', kind='lost', ended=?, error=? WHERE outcome IS NULL",
        (now, "the driver stopped while this attempt ran; resumed as a new attempt"),
    ).rowcount
    conn.execute("COMMIT")
    return in_flight, last_attempt, lost


@dataclass
class _Tasks:
    """The tasks table read back, one entry per task in id order (and the extras by id)."""

    records: list[Record] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    origins: list[str | None] = field(default_factory=list)
    aliases: dict[int, int] = field(default_factory=dict)
    gate_of: dict[int, tuple[int, ...]] = field(default_factory=dict)
    first_of: dict[int, int] = field(default_factory=dict)


def _read_tasks(
    conn: sqlite3.Connection,
    path: Path,
    in_flight: dict[int, int],
    last_attempt: dict[int, int],
) -> _Tasks:
    out = _Tasks()
    options: dict[tuple[str, str, str], Options] = {}
    rows = conn.execute(
        "SELECT id, name, kind, function, template, payload, has_refs, deps, options,"
        " workdir, env, tags, state, attempts, alias, gate, origin FROM tasks ORDER BY id"
    )
    for row in rows:
        tid, name, kind, fn, template, payload, has_refs, deps, opts, wd, env, tags = row[:12]
        state, n, alias, gate, origin = row[12:]
        out.origins.append(origin)
        if tid != len(out.records):
            raise StoreError(f"{path}: task ids jump to {tid}; the store is damaged")
        key = (opts, name, tags)
        o = options.get(key)
        if o is None:
            o = options[key] = _options(opts, name, json.loads(tags))
        out.records.append(
            Record(
                id=tid,
                name=name,
                kind=kind,
                options=o,
                deps=tuple(json.loads(deps)),
                payload=bytes(payload),
                has_refs=bool(has_refs),
                function=fn if fn is not None else -1,
                template=template,
                workdir=wd,
                env=json.loads(env) if env else None,
            )
        )
        st = State(state)
        if tid in in_flight and st in (State.PENDING, State.READY):
            st = State.QUEUED  # handed out, not yet started, when the driver stopped
        out.states.append(st)
        out.attempts.append(max(n, last_attempt.get(tid, 0)))
        if alias is not None:
            out.aliases[tid] = alias
        if gate:
            g = json.loads(gate)
            out.gate_of[tid] = tuple(g["gate"])
            out.first_of[tid] = int(g["first"])
    return out


def _gates(
    records: list[Record], gate_of: dict[int, tuple[int, ...]], first_of: dict[int, int]
) -> list[tuple[int, tuple[int, ...]]]:
    """The extra dependencies of each task: a dependent of a task whose Response had a gate
    waits for the gate tasks, and for their gates in turn (a replacement replaced again).
    Tasks added at or after the response (the gate tasks among them) are not its dependents
    in that sense, and get none."""
    out = []
    for r in records:
        extra: list[int] = []
        todo = [d for d in r.deps if d in gate_of]
        seen: set[int] = set()
        while todo:
            d = todo.pop()
            if d in seen:
                continue
            seen.add(d)
            gate = gate_of[d]
            if r.id >= first_of[d]:  # it came with the Response or later: not gated
                continue
            for g in gate:
                if g not in extra:
                    extra.append(g)
                if g in gate_of:
                    todo.append(g)
        if extra:
            out.append((r.id, tuple(extra)))
    return out


# Modules of shoal that moved, by the name a rule stored before the move gives them (a config
# file's rule holds its ensemble, whose groups hold their Sweep).
MOVED = {"shoal.spec.sweep": "shoal.config.sweep"}


class _Unpickler(pickle.Unpickler):
    """cloudpickle's loads (which is pickle's), with classes of :data:`MOVED` found anew."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED.get(module, module), name)


def load_rule(payload: bytes | None) -> Any:
    """A stored rule or strategy, or None when it could not be stored or read back."""
    if not payload:
        return None
    try:
        return _Unpickler(io.BytesIO(payload)).load()
    except (Exception, SystemExit):  # its module is gone, or its code raised: go on without
        return None


def memory(data: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = pickle.loads(data) if data else {}
    return out
