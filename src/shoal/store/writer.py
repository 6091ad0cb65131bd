"""The driver's side of the store: every loop iteration's changes in one transaction."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.core.commands import Transition
from shoal.core.events import Outcome
from shoal.core.resources import Node, Placement
from shoal.core.states import State
from shoal.errors import StoreError
from shoal.spec.lower import Plan
from shoal.spec.options import Options
from shoal.spec.retry import describe
from shoal.store.fs import copy_store, file_ident, holders, live_path, sync, wal_size
from shoal.store.schema import SCHEMA, VERSION, connect


def options_json(o: Options) -> str:
    return json.dumps(
        {
            "cpus": o.cpus,
            "gpus": o.gpus,
            "ranks": o.ranks,
            "memory": o.memory,
            "timeout": o.timeout,
            "priority": o.priority,
            "isolate": o.isolate,
            "retry": describe(o.retry),
            "estimate": o.estimate,
            "tolerate": o.tolerate,
        }
    )


# State.value goes through a Python-level descriptor: a plain dict is several times faster.
NAMES: dict[State, str] = {s: s.value for s in State}
QUIET = frozenset({State.PENDING, State.READY, State.QUEUED})
QUIET_FROM = frozenset({None, State.PENDING, State.READY, State.QUEUED})


def _ints(ids: tuple[int, ...]) -> str:
    return ",".join(map(str, ids))


def placement_json(p: Placement) -> str:
    """JSON of a placement, ``[[node, [cores], [gpus], memory, ranks], ...]``: written by
    hand, as a placement holds only ints (json.dumps costs several times more per start)."""
    return (
        "["
        + ",".join(
            f"[{s.node},[{_ints(s.cores)}],[{_ints(s.gpus)}],{s.memory},{s.ranks}]" for s in p.slots
        )
        + "]"
    )


@dataclass(slots=True)
class Batch:
    """Everything one loop iteration changes; written by :meth:`Writer.commit` at once."""

    transitions: list[Transition] = field(default_factory=list)
    dispatched: list[tuple[int, int, Placement, float]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    plans: list[tuple[Plan, str]] = field(default_factory=list)  # work added, and by whom
    aliases: list[tuple[int, int]] = field(default_factory=list)  # (task, replaced by)
    options: list[tuple[int, Options]] = field(default_factory=list)  # changed by a retry
    rules: list[tuple[Any, ...]] = field(default_factory=list)  # rows of the rules table
    # Response gates: (task, gate ids, first id of the work that came with the Response)
    gates: list[tuple[int, tuple[int, ...], int]] = field(default_factory=list)
    answers: list[tuple[int, float, str]] = field(default_factory=list)  # requests taken

    def __bool__(self) -> bool:
        return bool(
            self.transitions
            or self.dispatched
            or self.outcomes
            or self.plans
            or self.aliases
            or self.options
            or self.rules
            or self.gates
            or self.answers
        )


class Writer:
    """Owns the one writing connection. Not thread-safe: the driver loop alone uses it."""

    INLINE = 256 * 1024  # results up to this size live in the database, larger ones in files

    # Seconds between copies of a node-local store into the run directory.
    COPY_EVERY = float(os.environ.get("SHOAL_COPY_EVERY", "5"))

    def __init__(self, rundir: Path, state_dir: Path | None = None) -> None:
        self.dir = rundir
        self.path = rundir / "shoal.db"
        # With a state directory (node-local disk, when the run directory is on a network
        # file system), the live database is there and the run directory gets a consistent
        # copy every COPY_EVERY seconds and at the end.
        self.copy: Path | None = None
        if state_dir is not None:
            self.copy, self.path = self.path, live_path(rundir, state_dir)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sync(self.copy, self.path)
        if not self.path.exists():
            self._create()
        self.conn = connect(self.path)
        # The file the connection opened, and the run directory: if either is deleted or
        # replaced under the run, every later commit would go to an unlinked file (vanished).
        self._idents = [(p, file_ident(p)) for p in (self.path, self.dir)]
        # Checkpoints copy the WAL into the database and fsync: a background thread does them
        # (its own connection; SQLite releases the GIL), so the loop's commits rarely pay. The
        # writer still checkpoints itself past AUTO pages (~40 MB), so the WAL stays bounded
        # even if the background checkpoints cannot catch up; not while a reader blocks every
        # checkpoint (see _checkpoint_step and housekeep), when each commit would try again.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={AUTO}")
        self.auto = True  # the writer's own checkpoints are on (housekeep turns them off)
        self.log: logging.Logger | None = None  # warnings of the checkpointer go here
        self.checkpoints = 0  # checkpoints tried by the background thread
        self.blocked = 0  # of them, the last ones in a row that could not pass
        self._warned: int | None = None  # the WAL's size when the log last said it blocks
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="shoal-checkpoint", daemon=True
        )
        self._options_cache: dict[Options, str] = {}  # by value: equal options, one JSON

    def _create(self) -> None:
        """Build the schema in a side file and rename it into place: a reader that finds
        ``shoal.db`` always finds its tables."""
        tmp = self.path.with_name(self.path.name + ".new")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        conn = connect(tmp)
        try:
            conn.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise StoreError(f"cannot create the schema in {self.path}: {err}") from None
        finally:
            conn.close()  # the last connection checkpoints and removes the -wal file
        os.replace(tmp, self.path)

    # -- set-up -----------------------------------------------------------------------------
    def init(self, meta: dict[str, Any], nodes: Sequence[Node]) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(VERSION),))
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?)",
                [
                    (i, n.name, json.dumps(n.cores), json.dumps(n.gpus), n.memory)
                    for i, n in enumerate(nodes)
                ],
            )

    def set_meta(self, **values: Any) -> None:
        with self._tx():
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def _options(self, o: Options) -> str:
        cache = self._options_cache
        text = cache.get(o)
        if text is None:
            text = options_json(o)
            if len(cache) < 4096:  # tasks of a run share a few sets of options
                cache[o] = text
        return text

    def add_plan(self, plan: Plan, origin: str = "workflow", born: float | None = None) -> None:
        """Store the tasks and functions of a plan (before any of them is scheduled).

        With ``born`` (a time), also store each task's first transition, as the core will
        make it for a new run (ready when it waits for nothing, else pending): this happens
        while the workers start, instead of in the first loop iteration.
        """
        with self._tx():
            self._insert_plan(plan, origin)
            if born is not None:
                cause = f"submitted({len(plan.records)} tasks)"
                self.conn.executemany(
                    "INSERT INTO transitions(task, attempt, old, new, time, reason, event)"
                    " VALUES (?,0,NULL,?,?,'',?)",
                    [(r.id, "pending" if r.deps else "ready", born, cause) for r in plan.records],
                )

    def _insert_plan(self, plan: Plan, origin: str) -> None:
        rows = (
            (
                r.id,
                r.name,
                k.kind,
                k.function if k.function >= 0 else None,
                k.template,
                r.payload,
                int(r.has_refs),
                f"[{','.join(map(str, r.deps))}]",  # ids: the JSON of a list of ints
                self._options(k.options),
                k.workdir,
                json.dumps(k.env) if k.env else None,
                json.dumps(k.options.tags) if k.options.tags else "[]",
                "pending",
                origin,
            )
            for r in plan.records
            for k in (r.kind_of,)  # what the kind shares, read once (not through properties)
        )
        first = plan.first_function
        self.conn.executemany(
            "INSERT INTO functions VALUES (?, ?, ?)",
            [(first + i, n, p) for i, (n, p) in enumerate(plan.functions)],
        )
        self.conn.executemany(
            "INSERT INTO tasks(id, name, kind, function, template, payload, has_refs, deps,"
            " options, workdir, env, tags, state, origin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )

    def set_states(self, rows: list[tuple[str, int]]) -> None:
        """Write exact states (``(state, task)``) of tasks whose row says only "pending"."""
        with self._tx():
            self.conn.executemany("UPDATE tasks SET state=? WHERE id=?", rows)

    def result(self, task: int) -> bytes | None:
        """The pickled result of a task, from the store (for tasks whose value left memory)."""
        row = self.conn.execute("SELECT value, path FROM results WHERE task=?", (task,)).fetchone()
        if row is None:
            return None
        value, rel = row
        if value is not None:
            return bytes(value)
        path: str = rel  # a result too big to keep inline: its file in the run directory
        return (self.dir / path).read_bytes()

    # -- the per-iteration transaction ----------------------------------------------------------
    def commit(self, batch: Batch) -> None:
        """Write one loop iteration's changes in one transaction: new tasks first (transitions
        name them), then one table after the other. Result files are written before it."""
        rows = _task_rows(batch)
        results = [
            self._result_row(o.task, o.result)
            for o in batch.outcomes
            if o.ok and o.result is not None
        ]
        with self._tx():
            c = self.conn
            for plan, origin in batch.plans:  # new tasks first: transitions name them
                self._insert_plan(plan, origin)
            _write_tasks(c, batch)
            _write_rules(c, batch)
            _write_requests(c, batch)
            _write_transitions(c, batch, rows)
            _write_attempts(c, batch)
            _write_results(c, results)

    def _result_row(self, task: int, data: bytes) -> tuple[int, bytes | None, str | None, int]:
        if len(data) <= self.INLINE:
            return (task, data, None, len(data))
        rel = f"tasks/{task}/result.pkl"
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
        tmp.replace(path)
        return (task, None, rel, len(data))

    def _tx(self) -> _Tx:
        return _Tx(self.conn, self.path)

    def publish(self) -> None:
        """Copy a node-local store into the run directory now (no-op without one)."""
        if self.copy is not None:
            with contextlib.suppress(sqlite3.Error, OSError):
                copy_store(self.conn, self.copy)

    def start_checkpoints(self, every: float = 0.25) -> None:
        self._every = every
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn = connect(self.path)
        last = 0.0
        delay = self._every
        try:
            while not self._stop.wait(delay):
                delay = self._checkpoint_step(conn)
                if self.copy is not None and time.monotonic() - last >= self.COPY_EVERY:
                    last = time.monotonic()
                    with contextlib.suppress(sqlite3.Error, OSError):
                        copy_store(conn, self.copy)
        finally:
            conn.close()

    def _checkpoint_step(self, conn: sqlite3.Connection) -> float:
        """Try one checkpoint; return the seconds until the next. A checkpoint cannot pass
        the oldest snapshot a reader holds: while one reader keeps a read transaction open
        (a notebook, a script between two queries), no try passes and the WAL grows with the
        run. Trying again four times a second would only cost, so each try that cannot pass
        doubles the wait, up to BACKOFF seconds; the first that passes resets it. The log
        says when it blocks (with the WAL's size and who holds the database), again each
        time the WAL doubled (and grew REWARN bytes), and when it passes again."""
        self.checkpoints += 1
        try:
            _, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:  # busy or a failing disk: the next try, or close(), catches up
            return self._every
        if frames <= 0 or done >= frames:
            if self.blocked >= BLOCKED:
                self._say(logging.INFO, "checkpoints pass again; the WAL is copied back")
            self.blocked = 0
            self._warned = None
            return self._every
        self.blocked += 1
        delay: float = min(self._every * 2**self.blocked, BACKOFF)
        size = wal_size(self.path)
        last = self._warned
        if self.blocked >= BLOCKED and (last is None or size >= max(2 * last, last + REWARN)):
            self._warned = size
            who = holders(self.path)
            self._say(
                logging.WARNING,
                f"a reader holds a read transaction on {self.path} ({who}), so checkpoints "
                f"cannot pass and the WAL grows with the run: {size / 2**20:.1f} MB now. "
                f"shoal tries again every {BACKOFF:g} s at most and the run goes on; end that "
                "transaction (commit or close the connection, or let the notebook cell finish) "
                "to bound it again",
            )
        return delay

    def _final_checkpoint(self) -> None:
        """Copy the WAL back and truncate it, if no reader holds an old snapshot. A TRUNCATE
        checkpoint waits for readers (up to the busy timeout, 30 s) and cannot pass one that
        keeps its transaction: the end of the run does not wait. The WAL then stays, and the
        next connection to write (a resume) or the last to close copies it back."""
        c = self.conn
        try:
            c.execute("PRAGMA busy_timeout=0")
            _, frames, done = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return
        if frames > 0 and done < frames:
            self._say(
                logging.WARNING if self.blocked >= BLOCKED else logging.INFO,
                f"the end of the run could not copy the WAL back ({holders(self.path)}): "
                f"{wal_size(self.path) / 2**20:.1f} MB stay in {self.path}-wal until that "
                "reader ends its transaction and a connection checkpoints (any later write, "
                "or the last connection to close, does); nothing is lost",
            )

    def _say(self, level: int, text: str) -> None:
        if self.log is not None:
            self.log.log(level, "%s", text)

    def housekeep(self) -> str | None:
        """Called by the driver at most once a second, off the hot path: the writer's own
        checkpoints follow the background thread's (off while a reader blocks them, so that
        commits do not each try one in vain); and the reason the store is gone, if it is."""
        blocked = self.blocked >= BLOCKED
        if blocked == self.auto:
            self.auto = not blocked
            self.conn.execute(f"PRAGMA wal_autocheckpoint={AUTO if self.auto else 0}")
        return self.vanished()

    def vanished(self) -> str | None:
        """Why the store cannot keep the run any more (its file or the run directory was
        deleted or replaced), or None while it can."""
        for path, ident in self._idents:
            now = file_ident(path)
            if now != ident:
                what = "the run directory" if path == self.dir else "the database"
                how = "was deleted" if now is None else "was replaced by another file"
                return f"{what} {path} {how} while the run went on"
        return None

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()
        self._final_checkpoint()
        if self.copy is not None:
            try:
                copy_store(self.conn, self.copy)
            except (sqlite3.Error, OSError) as err:
                raise StoreError(
                    f"cannot copy the store {self.path} into {self.copy}: {err}. The run's "
                    f"state is intact in {self.path}; copy it by hand."
                ) from None
        self.conn.close()


AUTO = 10_000  # pages of WAL past which the writer checkpoints itself (~40 MB)
BACKOFF = 8.0  # the longest wait between two checkpoint tries that cannot pass
BLOCKED = 3  # tries in a row that could not pass before the log says so
REWARN = 64 << 20  # the log says it again when the WAL grew this much, and doubled, since


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back whole on any error, as a StoreError."""

    __slots__ = ("conn", "path")

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, err: object, tb: object) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as e:
                err = e
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.Error):
            hint = ""
            if "full" in str(err):
                hint = " The disk is full: free space, then resume the run."
            raise StoreError(
                f"writing to {self.path} failed ({err}); the last change was rolled back, the "
                f"database is intact.{hint}"
            ) from err


# -- the tables of the per-iteration transaction, in the order Writer.commit writes them -------
def _task_rows(batch: Batch) -> list[tuple[str, int, str | None, float, int]]:
    """``(state, attempts, reason, updated, id)`` of the tasks whose row changes.

    The task's row says where it stands for readers and resume: finished, running, retrying,
    or waiting ("pending" covers ready and queued, which a resume recomputes anyway; the
    transitions table has every step). Not writing the moves between the waiting states saves
    two row updates per task, and the birth of a task that waits for others one more (its row
    was inserted as "pending").
    """
    last: dict[int, Transition] = {}
    for t in batch.transitions:
        last[t.task] = t
    return [
        (NAMES[t.new], t.attempt, t.reason, t.time, t.task)
        for t in last.values()
        if t.new not in QUIET or t.old not in QUIET_FROM
    ]


def _write_tasks(c: sqlite3.Connection, batch: Batch) -> None:
    """What Responses and requests changed in the tasks' rows: aliases, options, gates."""
    if batch.aliases:
        c.executemany("UPDATE tasks SET alias=? WHERE id=?", [(b, a) for a, b in batch.aliases])
    if batch.options:
        c.executemany(
            "UPDATE tasks SET options=? WHERE id=?",
            [(options_json(o), t) for t, o in batch.options],
        )
    if batch.gates:
        c.executemany(
            "UPDATE tasks SET gate=? WHERE id=?",
            [(json.dumps({"gate": list(g), "first": f}), t) for t, g, f in batch.gates],
        )


def _write_rules(c: sqlite3.Connection, batch: Batch) -> None:
    if batch.rules:
        c.executemany(
            "INSERT INTO rules(label, trigger, calls, errors, seconds, slowest,"
            " last_error, memory, position, payload) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(label) DO UPDATE SET calls=excluded.calls,"
            " errors=excluded.errors, seconds=excluded.seconds, slowest=excluded.slowest,"
            " last_error=excluded.last_error, memory=excluded.memory,"
            " payload=COALESCE(excluded.payload, rules.payload)",
            batch.rules,
        )


def _write_requests(c: sqlite3.Connection, batch: Batch) -> None:
    """The driver's answers to control requests."""
    if batch.answers:
        c.executemany(
            "UPDATE requests SET taken=?, answer=? WHERE id=?",
            [(now, answer, rid) for rid, now, answer in batch.answers],
        )


def _write_transitions(
    c: sqlite3.Connection, batch: Batch, rows: list[tuple[str, int, str | None, float, int]]
) -> None:
    """Every transition, and the task rows they move (``rows``: :func:`_task_rows`)."""
    ts = batch.transitions
    if ts:
        c.executemany(
            "INSERT INTO transitions(task, attempt, old, new, time, reason, event)"
            " VALUES (?,?,?,?,?,?,?)",
            [
                (
                    t.task,
                    t.attempt,
                    NAMES[t.old] if t.old else None,
                    NAMES[t.new],
                    t.time,
                    t.reason,
                    t.cause,
                )
                for t in ts
            ],
        )
        c.executemany(
            "UPDATE tasks SET state=?, attempts=?, reason=?, updated=? WHERE id=?",
            rows,
        )


def _write_attempts(c: sqlite3.Connection, batch: Batch) -> None:
    """Attempts handed to a backend, then the outcomes of attempts that ended."""
    if batch.dispatched:
        c.executemany(
            "INSERT OR REPLACE INTO attempts(task, attempt, placement, dispatched)"
            " VALUES (?,?,?,?)",
            [(t, a, placement_json(p), now) for t, a, p, now in batch.dispatched],
        )
    if batch.outcomes:
        c.executemany(
            "UPDATE attempts SET started=?, ended=?, outcome=?, kind=?, exit_code=?,"
            " error=?, worker=? WHERE task=? AND attempt=?",
            [
                (
                    o.started,
                    o.ended,
                    "succeeded" if o.ok else "returned" if o.returned else "failed",
                    o.kind or None,
                    o.exit_code,
                    o.error or None,
                    o.worker,
                    o.task,
                    o.attempt,
                )
                for o in batch.outcomes
            ],
        )


def _write_results(
    c: sqlite3.Connection, results: list[tuple[int, bytes | None, str | None, int]]
) -> None:
    """Results inline, or the path of their file (written before the transaction)."""
    if results:
        c.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?)", results)
