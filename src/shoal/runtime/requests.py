"""Changing a run from another process: ``shoal.attach(run_dir)`` and the driver's side of it.

Another process (``shoal retry``, ``shoal rerun``, ``shoal cancel``, ``shoal submit``, or a
script through :func:`attach`) writes a request into the run's ``requests`` table. The live
driver reads the table a few times a second (:class:`Requests`), carries each request out
through the core like any other event, and records its answer in the same transaction. A run
with no live driver keeps its requests until it resumes. Nothing here bypasses the core: the
store stays the one truth, written by the one driver.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.core.events import Cancel, Command, Rerun, Retry, Stimulus, Stop, Submitted
from shoal.core.states import State
from shoal.errors import DefinitionError, ShoalError, StoreError
from shoal.spec.refs import StoredRef
from shoal.spec.response import decode_tasks, encode_tasks, tasks_of
from shoal.store.lock import held
from shoal.store.pickles import loads
from shoal.store.schema import connect

if TYPE_CHECKING:
    from shoal.runtime.driver import Driver

EVERY = 0.2  # seconds between looks at the requests table
KINDS = ("retry", "rerun", "cancel", "submit", "stop")


class Requests:
    """The driver's reader of the requests table."""

    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self.last = 0.0
        self.commands: list[Command] = []  # what the core made of them, for the next commit

    def poll(self, now: float, force: bool = False) -> None:
        """Carry out new requests; their commands wait in ``commands`` for the next commit.

        ``force`` is the first look of a resumed run: its answers also go to stderr, since
        whoever queued those requests was told they would be carried out on resume."""
        if now - self.last < EVERY and not force:
            return
        self.last = now
        conn = self.d.writer.conn
        try:
            rows = conn.execute(
                "SELECT id, kind, payload FROM requests WHERE taken IS NULL ORDER BY id"
            ).fetchall()
        except sqlite3.Error as err:
            self.d.log.warning("cannot read requests: %s", err)
            return
        for rid, kind, payload in rows:
            try:
                answer = self._apply(kind, loads(payload, "the request"), now)
            except ShoalError as err:
                answer = f"refused: {err}"
            except (Exception, SystemExit) as err:  # a bad request must not end the run
                answer = f"refused: {type(err).__name__}: {err}"
            self.d.log.info("request %s (%s): %s", rid, kind, answer)
            self.d.batch.answers.append((rid, now, answer))
            if force:  # requests that waited for this resume: whoever resumes sees the answers
                print(
                    f"shoal: request {rid} ({kind}), queued while no driver ran: {answer}",
                    file=sys.stderr,
                )

    def _handle(self, events: Sequence[Stimulus]) -> list[str]:
        """Feed events one at a time; a refused one is reported, the others go on."""
        notes = []
        for ev in events:
            try:
                self.commands.extend(self.d.scheduler.handle(ev))
            except DefinitionError as err:
                notes.append(str(err))
        return notes

    def _ids(self, p: dict[str, Any], states: frozenset[State]) -> list[int]:
        """The tasks a request names: by id or name, every failed one, or those of a tag
        (in ``states``)."""
        s = self.d.scheduler
        ids = [self._id(t) for t in p.get("tasks") or ()]
        if p.get("failed"):
            ids += s.in_state(State.FAILED)
        tag = p.get("tag")
        if tag:
            ids += [
                r.id
                for r in self.d.records
                if tag in r.options.tags and r.id in s and s.state(r.id) in states
            ]
        return sorted(set(ids))

    def _id(self, ref: int | str) -> int:
        if isinstance(ref, int) or str(ref).isdigit():
            tid = int(ref)
            if not 0 <= tid < len(self.d.records):
                raise DefinitionError(f"there is no task #{tid} in this run")
            return tid
        hits = [r.id for r in self.d.records if r.name == ref]
        if len(hits) != 1:
            raise DefinitionError(
                f"{len(hits)} tasks are named {ref!r}" + ("; give the id" if hits else "")
            )
        return hits[0]

    def _apply(self, kind: str, p: dict[str, Any], now: float) -> str:
        s = self.d.scheduler
        if kind == "retry":
            ids = self._ids(p, frozenset({State.FAILED, State.CANCELLED}))
            changes = p.get("changes") or {}
            events = [
                Retry(now, t, self.d.retry_info(t, changes), "retried by request") for t in ids
            ]
            notes = self._handle(events)
            return f"{len(ids) - len(notes)} task(s) retried" + "".join(f"; {n}" for n in notes)
        if kind == "rerun":
            tid = self._id(p["task"])
            notes = self._handle([Rerun(now, tid, bool(p.get("downstream")), "rerun by request")])
            if notes:
                raise DefinitionError(notes[0])
            return f"task #{tid} runs again" + (
                " with its downstream" if p.get("downstream") else ""
            )
        if kind == "cancel":
            live = frozenset(x for x in State if not x.terminal)
            ids = [t for t in self._ids(p, live) if not s.state(t).terminal]
            self._handle([Cancel(now, t, "cancelled by request") for t in ids])
            return f"{len(ids)} task(s) cancelled"
        if kind == "submit":
            tasks = decode_tasks(p["tasks"])
            infos = self.d.add_work(tasks, str(p.get("origin") or "shoal submit"))
            self._handle([Submitted(now, tuple(infos))])
            return (
                f"{len(infos)} task(s) added: #{infos[0].id}-#{infos[-1].id}" if infos else "none"
            )
        if kind == "stop":
            self._handle([Stop(now, bool(p.get("drain", True)), "stopped by request")])
            return "the run stops"
        raise DefinitionError(f"unknown request {kind!r}; requests are {', '.join(KINDS)}")


# -- the other side: attach ----------------------------------------------------------------------
class Attached:
    """A handle on a run directory from another process: each call queues a request."""

    def __init__(self, rundir: Path) -> None:
        self.dir = Path(rundir)
        self.path = self.dir / "shoal.db"
        if not self.path.exists():
            raise StoreError(f"no shoal database at {self.path}: give a run directory")
        from shoal.store.queries import Reader
        from shoal.store.writer import live_path

        with Reader(self.dir) as r:
            state_dir = (r.meta().get("options") or {}).get("state_dir")
        if state_dir and live_path(self.dir, Path(state_dir)).exists():
            self.path = live_path(self.dir, Path(state_dir))  # the store the driver writes

    @property
    def live(self) -> bool:
        """Whether a driver runs this run directory now (it then takes requests at once)."""
        return held(self.dir)

    def _put(self, kind: str, payload: dict[str, Any]) -> int:
        conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO requests(time, kind, payload) VALUES (?, ?, ?)",
                (time.time(), kind, pickle.dumps(payload, protocol=5)),
            )
            conn.execute("COMMIT")
            rid = cur.lastrowid
        except sqlite3.Error as err:
            raise StoreError(f"cannot queue a request in {self.path}: {err}") from None
        finally:
            conn.close()
        assert rid is not None
        return rid

    def answer(self, request: int, timeout: float = 10.0) -> str | None:
        """The driver's answer to a request, waiting up to ``timeout`` seconds (None: not yet
        taken, e.g. because no driver runs)."""
        deadline = time.monotonic() + timeout
        while True:
            conn = connect(self.path, readonly=True)
            try:
                row = conn.execute("SELECT answer FROM requests WHERE id=?", (request,)).fetchone()
            finally:
                conn.close()
            if row and row[0] is not None:
                return str(row[0])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def submit(self, *items: Any) -> int:
        """Add tasks or workflows to the run; they may use ``attach(...).ref(id)``."""
        tasks = []
        seen: set[int] = set()
        for item in items:
            for t in tasks_of(item, "submit"):
                if t.key not in seen:
                    seen.add(t.key)
                    tasks.append(t)
        if not tasks:
            raise DefinitionError("submit(): nothing to submit")
        origin = f"submitted by pid {os.getpid()} on {socket.gethostname()}"
        return self._put("submit", {"tasks": encode_tasks(tasks), "origin": origin})

    def retry(
        self,
        *tasks: int | str,
        failed: bool = False,
        tag: str | None = None,
        **changes: Any,
    ) -> int:
        if not (tasks or failed or tag):
            raise DefinitionError("retry(): name tasks, or pass failed=True or tag=...")
        json.dumps(changes)  # plain options only
        return self._put(
            "retry", {"tasks": list(tasks), "failed": failed, "tag": tag, "changes": changes}
        )

    def rerun(self, task: int | str, downstream: bool = False) -> int:
        return self._put("rerun", {"task": task, "downstream": downstream})

    def cancel(self, *tasks: int | str, tag: str | None = None) -> int:
        if not (tasks or tag):
            raise DefinitionError("cancel(): name tasks, or pass tag=...")
        return self._put("cancel", {"tasks": list(tasks), "tag": tag})

    def stop(self, drain: bool = True) -> int:
        return self._put("stop", {"drain": drain})

    def ref(self, task: int) -> StoredRef:
        """A reference to the output of task ``task`` of this run, for submitted tasks."""
        return StoredRef(int(task))


def attach(run_dir: str | os.PathLike[str]) -> Attached:
    """A handle on a run from another process: ``shoal.attach(d).submit(task)``, ``.retry``,
    ``.rerun``, ``.cancel``, ``.stop``; a live driver takes each within a second, a stopped run
    when it resumes."""
    return Attached(Path(run_dir))
