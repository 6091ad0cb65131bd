"""Read-only questions to a run's store; safe while the run goes on (WAL readers never block)."""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shoal.errors import StoreError
from shoal.store.schema import connect


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: int
    name: str
    kind: str
    state: str
    attempts: int
    reason: str | None
    updated: float | None
    tags: tuple[str, ...]
    deps: tuple[int, ...]
    origin: str | None = None  # who added it (None or "workflow": the initial workflow)
    alias: int | None = None  # replaced by this task (Response replace=)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "attempts": self.attempts,
            "reason": self.reason,
            "updated": self.updated,
            "tags": list(self.tags),
            "deps": list(self.deps),
            "origin": self.origin or "workflow",
            "alias": self.alias,
        }


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# States a task's row may hold while it waits; the row may lag behind the waiting state.
WAITING = ("pending", "ready", "queued")

_TASK_COLS = "id, name, kind, state, attempts, reason, updated, tags, deps, origin, alias"
# What ``Reader.table`` sorts by, and the SQL of each
_SORTS = {
    "id": "t.id",
    "name": "t.name",
    "state": "t.state",
    "attempts": "t.attempts",
    "start": "a.started",
    "runtime": "(a.ended - a.started)",
}


def _filters(
    states: tuple[str, ...],
    exact: bool,
    name: str | None,
    tag: str | None,
    since: float | None,
    until: float | None,
    text: str | None,
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of :meth:`Reader.table` and their arguments."""
    where: list[str] = []
    args: list[Any] = []
    if states:
        wanted = sorted({*states, *(WAITING if exact else ())})
        where.append(f"t.state IN ({','.join('?' * len(wanted))})")
        args.extend(wanted)
    if name:
        where.append("t.name GLOB ?")
        args.append(name)
    if tag:
        where.append("EXISTS (SELECT 1 FROM json_each(t.tags) WHERE value = ?)")
        args.append(tag)
    if text:
        like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(t.name LIKE ? ESCAPE '\\' OR t.reason LIKE ? ESCAPE '\\')")
        args.extend([like, like])
    if since is not None:
        where.append("COALESCE(a.started, t.updated) >= ?")
        args.append(since)
    if until is not None:
        where.append("COALESCE(a.started, t.updated) <= ?")
        args.append(until)
    return where, args


def _task(row: tuple[Any, ...]) -> TaskRow:
    return TaskRow(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        tuple(json.loads(row[7])),
        tuple(json.loads(row[8])),
        row[9],
        row[10],
    )


class Reader:
    """Queries over ``shoal.db``. Open, ask, close; or use as a context manager."""

    def __init__(self, rundir: Path | str) -> None:
        self.dir = Path(rundir)
        self.conn = connect(self.dir / "shoal.db", readonly=True)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _q(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self.conn
        except sqlite3.Error as err:
            raise StoreError(f"cannot read {self.dir / 'shoal.db'}: {err}") from None
        except (ValueError, KeyError, TypeError, IndexError) as err:  # decoding a row
            raise StoreError(
                f"{self.dir / 'shoal.db'} holds what shoal never writes ({type(err).__name__}: "
                f"{err}): the store is damaged. Keep a copy; run the workflow again for its "
                "results."
            ) from None

    def meta(self) -> dict[str, Any]:
        with self._q() as c:
            return {k: json.loads(v) for k, v in c.execute("SELECT key, value FROM meta")}

    def counts(self) -> dict[str, int]:
        """Tasks per state; waiting tasks by their exact state (see :meth:`_waiting`)."""
        with self._q() as c:
            counts = dict(c.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
        if any(counts.get(s) for s in WAITING):
            for s in WAITING:
                counts.pop(s, None)
            for s in self._waiting().values():
                counts[s] = counts.get(s, 0) + 1
        return counts

    def _waiting(self, ids: list[int] | None = None) -> dict[int, str]:
        """The exact state of each task whose row says it waits (pending, ready or queued).

        While a run goes on, the writer leaves a task's row alone when it moves between the
        waiting states (that saves two row updates per task), so such a row may say "pending"
        for a task that is ready or queued. Its last transition says where it stands.
        ``ids``: only these tasks (a page of a table).
        """
        marks = ",".join("?" * len(WAITING))
        only = f" AND t.id IN ({','.join(str(int(i)) for i in ids)})" if ids else ""
        with self._q() as c:
            rows = c.execute(
                "SELECT t.id, t.state, tr.new FROM tasks t"
                " LEFT JOIN (SELECT task, max(seq) AS seq FROM transitions GROUP BY task) l"
                " ON l.task = t.id LEFT JOIN transitions tr ON tr.seq = l.seq"
                f" WHERE t.state IN ({marks}){only}",
                WAITING,
            ).fetchall()
        return {i: (new if new in WAITING else state) for i, state, new in rows}

    def nodes(self) -> list[dict[str, Any]]:
        with self._q() as c:
            rows = c.execute("SELECT id, name, cores, gpus, memory FROM nodes ORDER BY id")
            return [
                {"id": i, "name": n, "cores": json.loads(cs), "gpus": json.loads(gs), "memory": m}
                for i, n, cs, gs, m in rows
            ]

    def tasks(
        self, state: str | None = None, limit: int | None = None, tag: str | None = None
    ) -> list[TaskRow]:
        sql = f"SELECT {_TASK_COLS} FROM tasks"
        args: list[Any] = []
        if state in WAITING:  # a waiting row may say another waiting state: filter after
            sql += f" WHERE state IN ({','.join('?' * len(WAITING))})"
            args.extend(WAITING)
        elif state:
            sql += " WHERE state = ?"
            args.append(state)
        sql += " ORDER BY id"
        if limit and state not in WAITING and not tag:
            sql += f" LIMIT {int(limit)}"
        with self._q() as c:
            rows = [_task(r) for r in c.execute(sql, args)]
        if any(r.state in WAITING for r in rows):
            exact = self._waiting()
            rows = [
                replace(r, state=exact.get(r.id, r.state)) if r.state in WAITING else r
                for r in rows
            ]
        if state in WAITING:
            rows = [r for r in rows if r.state == state]
        if tag:
            rows = [r for r in rows if tag in r.tags]
        return rows[:limit] if limit else rows

    def table(
        self,
        states: tuple[str, ...] = (),
        name: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        sort: str = "id",
        limit: int | None = None,
        offset: int = 0,
        text: str | None = None,
        count: bool = True,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Tasks as a table is shown (``shoal tasks``, the dashboard): the rows of one page
        and how many match in all (None without ``count``: counting reads every row, which
        takes a fraction of a second on a million tasks). Filters: any of ``states``, a
        ``name`` glob (``relax*``), a ``tag``, a ``text`` found in the name or the reason, a
        start (or last change) between ``since`` and ``until``; ``sort`` by id, name, state,
        attempts, start or runtime (``-runtime``: largest first). Each row:
        :meth:`TaskRow.as_dict`, and ``started`` and ``runtime`` of its newest attempt."""
        key = sort.lstrip("-")
        if key not in _SORTS:
            raise StoreError(f"cannot sort by {key!r}; sort by one of: {', '.join(_SORTS)}")
        exact = any(s in WAITING for s in states)  # rows may lag: the exact state is after
        where, args = _filters(states, exact, name, tag, since, until, text)
        timed = since is not None or until is not None or key in ("start", "runtime")
        cond = " WHERE " + " AND ".join(where) if where else ""
        join = " LEFT JOIN attempts a ON a.task = t.id AND a.attempt = t.attempts"
        order = f" ORDER BY {_SORTS[key]} {'DESC' if sort.startswith('-') else 'ASC'}, t.id"
        cols = ", ".join(f"t.{c.strip()}" for c in _TASK_COLS.split(","))
        paged = not exact and limit is not None
        page = f" LIMIT {int(limit or 0)} OFFSET {int(offset)}" if paged else ""
        if timed:
            sql = f"SELECT {cols}, a.started, a.ended FROM tasks t{join}{cond}{order}{page}"
        else:  # the page first, then its attempts: a late page skips rows, not joins
            sql = (
                f"SELECT {cols}, a.started, a.ended FROM (SELECT * FROM tasks t{cond}{order}"
                f"{page}) t{join}{order}"
            )
        with self._q() as c:
            found = c.execute(sql, args).fetchall()
            total: int | None = None
            if paged and count:
                base = f" FROM tasks t{join if timed else ''}{cond}"
                total = c.execute("SELECT count(*)" + base, args).fetchone()[0]
        rows = []
        for r in found:
            row = _task(r[:11]).as_dict()
            row["started"] = r[11]
            row["runtime"] = r[12] - r[11] if r[11] is not None and r[12] is not None else None
            rows.append(row)
        lagging = [row["id"] for row in rows if row["state"] in WAITING]
        if lagging:
            now = self._waiting(None if exact else lagging)
            for row in rows:
                row["state"] = now.get(row["id"], row["state"])
        if exact:
            rows = [row for row in rows if row["state"] in states]
        if not paged:
            total = len(rows)
            rows = rows[offset : None if limit is None else offset + limit]
        return rows, total

    def links(self) -> list[tuple[int, str, str, list[int]]]:
        """Every task as (id, name, state, the ids it depends on), in id order: a graph."""
        with self._q() as c:
            rows = c.execute("SELECT id, name, state, deps FROM tasks ORDER BY id").fetchall()
        lagging = [r[0] for r in rows if r[2] in WAITING]
        exact = self._waiting(lagging) if lagging else {}
        return [(i, n, exact.get(i, s), list(json.loads(d))) for i, n, s, d in rows]

    def find(self, ref: str | int) -> TaskRow:
        """A task by id, or by name if the name is unique."""
        row = self._find(ref)
        if row.state not in WAITING:
            return row
        with self._q() as c:
            last = c.execute(
                "SELECT new FROM transitions WHERE task=? ORDER BY seq DESC LIMIT 1", (row.id,)
            ).fetchone()
        return replace(row, state=last[0]) if last and last[0] in WAITING else row

    def _find(self, ref: str | int) -> TaskRow:
        with self._q() as c:
            if isinstance(ref, int) or str(ref).isdigit():
                row = c.execute(
                    f"SELECT {_TASK_COLS} FROM tasks WHERE id=?", (int(ref),)
                ).fetchone()
                if row:
                    return _task(row)
            rows = c.execute(f"SELECT {_TASK_COLS} FROM tasks WHERE name=?", (str(ref),)).fetchall()
            if not rows and _UUID.match(str(ref)):  # a jobflow job: "<name> <uuid>/<index>"
                rows = c.execute(
                    f"SELECT {_TASK_COLS} FROM tasks WHERE instr(name, ?) > 0 ORDER BY id",
                    (f" {ref}/",),
                ).fetchall()
                if rows:  # its newest index
                    return _task(rows[-1])
        if len(rows) == 1:
            return _task(rows[0])
        if not rows:
            raise StoreError(
                f"no task {ref!r} in {self.dir}: give a task id, a unique name, or the uuid "
                "of a jobflow job"
            )
        ids = ", ".join(str(r[0]) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise StoreError(f"{len(rows)} tasks are named {ref!r} (ids {ids}): give the id")

    def _dicts(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a query as dicts keyed by column name."""
        with self._q() as c:
            cur = c.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur]

    def attempts(self, task: int) -> list[dict[str, Any]]:
        out = self._dicts(
            "SELECT attempt, placement, dispatched, started, ended, outcome, kind, exit_code,"
            " error, worker FROM attempts WHERE task=? ORDER BY attempt",
            (task,),
        )
        for a in out:
            a["placement"] = json.loads(a["placement"]) if a["placement"] else None
        return out

    def options(self, task: int) -> dict[str, Any]:
        """The options a task was given (cpus, gpus, memory, timeout, retries...)."""
        with self._q() as c:
            row = c.execute("SELECT options FROM tasks WHERE id=?", (task,)).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def story(self, task: int) -> list[dict[str, Any]]:
        """Every transition of a task, oldest first, with the event that caused it."""
        return self._dicts(
            "SELECT attempt, old, new, time, reason, event FROM transitions"
            " WHERE task=? ORDER BY seq",
            (task,),
        )

    def running(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._q() as c:
            cur = c.execute(
                "SELECT t.id, t.name, a.attempt, a.dispatched, a.placement FROM tasks t"
                " JOIN attempts a ON a.task = t.id AND a.attempt = t.attempts"
                " WHERE t.state = 'running' ORDER BY a.dispatched LIMIT ?",
                (limit,),
            )
            return [
                {
                    "id": i,
                    "name": n,
                    "attempt": a,
                    "dispatched": d,
                    "placement": json.loads(p) if p else None,
                }
                for i, n, a, d, p in cur
            ]

    def rules(self) -> list[dict[str, Any]]:
        """Rules and strategies of the run: calls, errors, time spent, the last error."""
        try:
            return self._dicts(
                "SELECT label AS rule, trigger, calls, errors, seconds, slowest, last_error"
                " FROM rules ORDER BY rowid"
            )
        except sqlite3.OperationalError:  # a run directory from before rules existed
            return []

    def memory(self, rule: str) -> dict[str, Any]:
        """The stored memory of a rule or strategy."""
        try:
            with self._q() as c:
                row = c.execute("SELECT memory FROM rules WHERE label=?", (rule,)).fetchone()
                labels = [r[0] for r in c.execute("SELECT label FROM rules")]
        except sqlite3.OperationalError:
            row, labels = None, []
        if row is None:
            known = ", ".join(labels) or "none"
            raise StoreError(f"no rule or strategy {rule!r} in {self.dir} (known: {known})")
        out: dict[str, Any] = pickle.loads(row[0]) if row[0] else {}
        return out

    def timeline(self) -> Iterator[tuple[Any, ...]]:
        """Every attempt that started, for pictures of a run: (task, attempt, placement as
        stored, started (a running one: when it was handed to the backend, which is all the
        store knows of it yet), ended or None, outcome or None, kind or None, the task's tags
        as stored, when the task last became ready or None), in the order they started."""
        with self._q() as c:
            yield from c.execute(
                "SELECT a.task, a.attempt, a.placement, COALESCE(a.started, a.dispatched),"
                " a.ended, a.outcome, a.kind, t.tags, r.at FROM attempts a"
                " JOIN tasks t ON t.id = a.task"
                " LEFT JOIN (SELECT task, max(time) AS at FROM transitions WHERE new = 'ready'"
                " GROUP BY task) r ON r.task = a.task"
                " WHERE COALESCE(a.started, a.dispatched) IS NOT NULL"
                " ORDER BY COALESCE(a.started, a.dispatched)"
            )

    def failures(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Failed tasks with their reason, the last attempt's error kind and exit code, and
        their log folder (None when there is none: the task printed nothing)."""
        sql = (
            "SELECT t.id, t.name, t.reason, a.kind, a.exit_code FROM tasks t"
            " LEFT JOIN attempts a ON a.task = t.id AND a.attempt = t.attempts"
            " WHERE t.state = 'failed' ORDER BY t.id"
        )
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._q() as c:
            return [
                {
                    "id": i,
                    "name": n,
                    "reason": r,
                    "kind": k,
                    "exit_code": x,
                    "logs": self.logs(i),
                }
                for i, n, r, k, x in c.execute(sql)
            ]

    def logs(self, task: int) -> str | None:
        """The folder with a task's stdout, stderr and traceback, or None: a task gets one
        only when it prints something (or a Python task fails)."""
        folder = self.dir / "tasks" / str(task)
        return str(folder) if folder.is_dir() else None

    def dependents(self, task: int, most: int = 200) -> list[dict[str, Any]]:
        """The tasks that depend on ``task`` (id, name, state), ``most`` of them: a text
        search of the dependency lists first, then their exact ids."""
        with self._q() as c:
            rows = c.execute(
                "SELECT id, name, state, deps FROM tasks WHERE instr(deps, ?) > 0 ORDER BY id",
                (str(int(task)),),
            ).fetchall()
            out = []
            for i, name, state, deps in rows:
                if task in json.loads(deps):
                    out.append({"id": i, "name": name, "state": state})
                    if len(out) >= most:
                        break
        waiting = [d["id"] for d in out if d["state"] in WAITING]
        exact = self._waiting(waiting) if waiting else {}
        for d in out:
            d["state"] = exact.get(d["id"], d["state"])
        return out

    def result_size(self, task: int) -> int | None:
        """The size in bytes of a task's stored result (None: it has none)."""
        with self._q() as c:
            row = c.execute("SELECT size FROM results WHERE task=?", (task,)).fetchone()
        return None if row is None else int(row[0])

    def result_bytes(self, task: int) -> bytes | None:
        with self._q() as c:
            row = c.execute("SELECT value, path FROM results WHERE task=?", (task,)).fetchone()
        if row is None:
            return None
        if row[0] is not None:
            data: bytes = row[0]
            return data
        rel: str = row[1]  # a result too big to keep inline: its file in the run directory
        return (self.dir / rel).read_bytes()

    def result(self, task: int) -> Any:
        data = self.result_bytes(task)
        if data is None:
            raise StoreError(f"task {task} has no stored result")
        return pickle.loads(data)
