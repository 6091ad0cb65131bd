"""Changing a run from another process: ``shoal.attach(run_dir)`` and the driver's side of it.

Another process (``shoal retry``, ``shoal rerun``, ``shoal cancel``, ``shoal submit``, or a
script through :func:`attach`) writes a request into the run's ``requests`` table. The live
driver reads the table a few times a second (:class:`Requests`), carries each request out
through the core like any other event, and records its answer in the same transaction. A run
with no live driver keeps its requests until it resumes. Nothing here bypasses the core: the
store stays the one truth, written by the one driver.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shoal.core.commands import Command
from shoal.core.states import State
from shoal.core.stimuli import (
    CancelRequested,
    RerunRequested,
    RetryRequested,
    Stimulus,
    StopRequested,
    Submitted,
    TaskInfo,
)
from shoal.core.tasks import REOPENABLE
from shoal.errors import RequestRefused, ShoalError, StoreError
from shoal.spec.lower import Record
from shoal.spec.refs import StoredRef
from shoal.spec.response import decode_tasks, encode_tasks, tasks_of
from shoal.spec.task import Task
from shoal.store import requests as table
from shoal.store.fs import live_path
from shoal.store.lock import held
from shoal.store.pickles import loads
from shoal.store.queries import Reader
from shoal.store.writer import Batch

EVERY = 0.2  # seconds between looks at the requests table


class RequestKind(enum.StrEnum):
    """What another process may ask of a run (the ``kind`` column of the requests table)."""

    RETRY = "retry"
    RERUN = "rerun"
    CANCEL = "cancel"
    SUBMIT = "submit"
    STOP = "stop"


KINDS = tuple(k.value for k in RequestKind)


class Core(Protocol):
    """What requests need of the scheduler: its questions, and its one mutator."""

    def handle(self, *events: Stimulus) -> list[Command]: ...
    def state(self, task: int) -> State: ...
    def in_state(self, *states: State) -> list[int]: ...
    def __contains__(self, task: int) -> bool: ...


class Graph(Protocol):
    """What requests need of the run's records (runtime.work.Work)."""

    records: list[Record]

    def add(self, tasks: list[Task], origin: str) -> list[TaskInfo]: ...
    def retry_info(self, task: int, changes: dict[str, Any]) -> TaskInfo | None: ...


class Requests:
    """The driver's reader of the requests table: each request becomes stimuli for the core,
    fed one at a time so that a refused one leaves the others standing."""

    def __init__(
        self, core: Core, work: Graph, conn: sqlite3.Connection, log: logging.Logger
    ) -> None:
        self.core = core
        self.work = work
        self.conn = conn
        self.log = log
        self.last = 0.0
        self.commands: list[Command] = []  # what the core made of them, for the next commit
        self.apply: dict[RequestKind, Callable[[dict[str, Any], float], str]] = {
            RequestKind.RETRY: self._retry,
            RequestKind.RERUN: self._rerun,
            RequestKind.CANCEL: self._cancel,
            RequestKind.SUBMIT: self._submit,
            RequestKind.STOP: self._stop,
        }

    def poll(self, now: float, batch: Batch, force: bool = False) -> None:
        """Carry out new requests; their commands wait in ``commands`` and their answers in
        ``batch`` for the next commit.

        ``force`` is the first look of a resumed run: its answers also go to stderr, since
        whoever queued those requests was told they would be carried out on resume."""
        if now - self.last < EVERY and not force:
            return
        self.last = now
        try:
            rows = table.pending(self.conn)
        except sqlite3.Error as err:
            self.log.warning("cannot read requests: %s", err)
            return
        for rid, kind, payload in rows:
            try:
                answer = self._apply(kind, loads(payload, "the request"), now)
            except ShoalError as err:
                answer = f"refused: {err}"
            except (Exception, SystemExit) as err:  # a bad request must not end the run
                answer = f"refused: {type(err).__name__}: {err}"
            self.log.info("request %s (%s): %s", rid, kind, answer)
            batch.answers.append((rid, now, answer))
            if force:  # requests that waited for this resume: whoever resumes sees the answers
                print(
                    f"shoal: request {rid} ({kind}), queued while no driver ran: {answer}",
                    file=sys.stderr,
                )

    def _apply(self, kind: str, p: dict[str, Any], now: float) -> str:
        if kind not in KINDS:
            raise RequestRefused(f"unknown request {kind!r}; requests are {', '.join(KINDS)}")
        return self.apply[RequestKind(kind)](p, now)

    def _handle(self, events: Sequence[Stimulus]) -> list[str]:
        """Feed stimuli one at a time; a refused one is reported, the others go on."""
        notes = []
        for ev in events:
            try:
                self.commands.extend(self.core.handle(ev))
            except RequestRefused as err:
                notes.append(str(err))
        return notes

    def _ids(self, p: dict[str, Any], states: frozenset[State]) -> list[int]:
        """The tasks a request names: by id or name, every failed one, or those of a tag
        (in ``states``)."""
        s = self.core
        ids = [self._id(t) for t in p.get("tasks") or ()]
        if p.get("failed"):
            ids += s.in_state(State.FAILED)
        tag = p.get("tag")
        if tag:
            ids += [
                r.id
                for r in self.work.records
                if tag in r.options.tags and r.id in s and s.state(r.id) in states
            ]
        return sorted(set(ids))

    def _id(self, ref: int | str) -> int:
        records = self.work.records
        if isinstance(ref, int) or str(ref).isdigit():
            tid = int(ref)
            if not 0 <= tid < len(records):
                raise RequestRefused(f"there is no task #{tid} in this run")
            return tid
        hits = [r.id for r in records if r.name == ref]
        if len(hits) != 1:
            raise RequestRefused(
                f"{len(hits)} tasks are named {ref!r}" + ("; give the id" if hits else "")
            )
        return hits[0]

    def _retry(self, p: dict[str, Any], now: float) -> str:
        ids = self._ids(p, REOPENABLE)
        changes = p.get("changes") or {}
        events = [
            RetryRequested(now, t, self.work.retry_info(t, changes), "retried by request")
            for t in ids
        ]
        notes = self._handle(events)
        return f"{len(ids) - len(notes)} task(s) retried" + "".join(f"; {n}" for n in notes)

    def _rerun(self, p: dict[str, Any], now: float) -> str:
        ids = [self._id(t) for t in (p.get("tasks") or [p["task"]])]
        down = bool(p.get("downstream"))
        notes = self._handle([RerunRequested(now, t, down, "rerun by request") for t in ids])
        with_down = " with its downstream" if down else ""
        if len(ids) == 1:
            if notes:
                raise RequestRefused(notes[0])
            return f"task #{ids[0]} runs again{with_down}"
        return f"{len(ids) - len(notes)} task(s) run again{with_down}" + "".join(
            f"; {n}" for n in notes
        )

    def _cancel(self, p: dict[str, Any], now: float) -> str:
        live = frozenset(x for x in State if not x.terminal)
        ids = [t for t in self._ids(p, live) if not self.core.state(t).terminal]
        self._handle([CancelRequested(now, t, "cancelled by request") for t in ids])
        return f"{len(ids)} task(s) cancelled"

    def _submit(self, p: dict[str, Any], now: float) -> str:
        tasks = decode_tasks(p["tasks"])
        infos = self.work.add(tasks, str(p.get("origin") or "shoal submit"))
        self._handle([Submitted(now, tuple(infos))])
        return f"{len(infos)} task(s) added: #{infos[0].id}-#{infos[-1].id}" if infos else "none"

    def _stop(self, p: dict[str, Any], now: float) -> str:
        self._handle([StopRequested(now, bool(p.get("drain", True)), "stopped by request")])
        return "the run stops"


# -- the other side: attach ----------------------------------------------------------------------
class Attached:
    """A handle on a run directory from another process: each call queues a request."""

    def __init__(self, rundir: Path) -> None:
        self.dir = Path(rundir)
        self.path = self.dir / "shoal.db"
        if not self.path.exists():
            raise StoreError(f"no shoal database at {self.path}: give a run directory")
        with Reader(self.dir) as r:
            state_dir = (r.meta().get("options") or {}).get("state_dir")
        if state_dir and live_path(self.dir, Path(state_dir)).exists():
            self.path = live_path(self.dir, Path(state_dir))  # the store the driver writes

    @property
    def live(self) -> bool:
        """Whether a driver runs this run directory now (it then takes requests at once)."""
        return held(self.dir)

    def _put(self, kind: RequestKind, payload: dict[str, Any]) -> int:
        return table.put(self.path, kind, payload)

    def answer(self, request: int, timeout: float = 10.0) -> str | None:
        """The driver's answer to a request, waiting up to ``timeout`` seconds (None: not yet
        taken, e.g. because no driver runs)."""
        deadline = time.monotonic() + timeout
        while True:
            got = table.answer(self.path, request)
            if got is not None or time.monotonic() >= deadline:
                return got
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
            raise RequestRefused("submit(): nothing to submit")
        origin = f"submitted by pid {os.getpid()} on {socket.gethostname()}"
        return self._put(RequestKind.SUBMIT, {"tasks": encode_tasks(tasks), "origin": origin})

    def retry(
        self,
        *tasks: int | str,
        failed: bool = False,
        tag: str | None = None,
        **changes: Any,
    ) -> int:
        if not (tasks or failed or tag):
            raise RequestRefused("retry(): name tasks, or pass failed=True or tag=...")
        json.dumps(changes)  # plain options only
        return self._put(
            RequestKind.RETRY,
            {"tasks": list(tasks), "failed": failed, "tag": tag, "changes": changes},
        )

    def rerun(self, *tasks: int | str, downstream: bool = False) -> int:
        """Run finished tasks again (and, ``downstream``, what depends on them); each one
        that cannot be is said in the answer, the others run."""
        if not tasks:
            raise RequestRefused("rerun(): name the tasks to run again")
        return self._put(RequestKind.RERUN, {"tasks": list(tasks), "downstream": downstream})

    def cancel(self, *tasks: int | str, tag: str | None = None) -> int:
        if not (tasks or tag):
            raise RequestRefused("cancel(): name tasks, or pass tag=...")
        return self._put(RequestKind.CANCEL, {"tasks": list(tasks), "tag": tag})

    def stop(self, drain: bool = True) -> int:
        return self._put(RequestKind.STOP, {"drain": drain})

    def ref(self, task: int) -> StoredRef:
        """A reference to the output of task ``task`` of this run, for submitted tasks."""
        return StoredRef(int(task))


def attach(run_dir: str | os.PathLike[str]) -> Attached:
    """A handle on a run from another process: ``shoal.attach(d).submit(task)``, ``.retry``,
    ``.rerun``, ``.cancel``, ``.stop``; a live driver takes each within a second, a stopped run
    when it resumes."""
    return Attached(Path(run_dir))


def check_submit(rundir: Path, flows: list[Any]) -> None:
    """Refuse at once what the driver would refuse anyway: tasks that no node of the run
    can hold (a stopped run would only answer when it resumes)."""
    from shoal.core.resources import Node, Pool
    from shoal.errors import DefinitionError
    from shoal.runtime.work import check_resources
    from shoal.spec.lower import Functions, lower
    from shoal.spec.response import tasks_of
    from shoal.spec.task import detached
    from shoal.store.queries import Reader
    from shoal.store.selection import refuse

    tasks = list({t.key: t for f in flows for t in tasks_of(f, "submit")}.values())
    with Reader(rundir) as r:
        nodes = [
            Node(n["name"], tuple(n["cores"]), tuple(n["gpus"]), n["memory"]) for n in r.nodes()
        ]
    try:
        with detached():
            plan = lower(tasks, "submit", 0, {}, Functions())
    except DefinitionError:  # e.g. references to the run's tasks: the driver checks them
        return
    try:
        check_resources(plan.records, Pool(tuple(nodes)))
    except DefinitionError as err:
        refuse(rundir, f"cannot submit: {err}")


def act(d: Path, kind: str, given: dict[str, Any]) -> tuple[Attached, int]:
    """Check a control request against the store, as the CLI does (a refusal raises
    :class:`~shoal.errors.DefinitionError` saying why), then queue it: ``retry``, ``rerun``,
    ``cancel`` or ``stop`` of run ``d``, for the dashboard and the MCP server. ``given``:
    ``tasks`` (ids or names), ``tag``, ``failed``, ``states``, ``downstream``, ``now``."""
    from shoal.errors import DefinitionError
    from shoal.store.selection import check_cancel, check_retry, chosen_to_rerun, task_ref

    tasks = tuple(str(t) for t in given.get("tasks") or ())
    tag = given.get("tag") or None
    a = Attached(d)
    if kind == "retry":
        failed = bool(given.get("failed"))
        if not (tasks or failed or tag):
            raise DefinitionError("a retry names tasks, or failed, or a tag")
        check_retry(d, tasks, failed, tag)
        return a, a.retry(*[task_ref(t) for t in tasks], failed=failed, tag=tag)
    if kind == "rerun":
        states = tuple(str(s) for s in given.get("states") or ())
        chosen = chosen_to_rerun(d, tasks, tag, states)
        return a, a.rerun(*chosen, downstream=bool(given.get("downstream")))
    if kind == "cancel":
        if not (tasks or tag):
            raise DefinitionError("a cancel names tasks, or a tag")
        check_cancel(d, tasks, tag)
        return a, a.cancel(*[task_ref(t) for t in tasks], tag=tag)
    if kind != "stop":
        raise DefinitionError(f"no request {kind!r}: retry, rerun, cancel or stop")
    if not a.live:
        raise DefinitionError(f"no driver runs {d}: there is nothing to stop")
    return a, a.stop(drain=not given.get("now"))
