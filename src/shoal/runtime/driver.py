"""The one loop: events in, persist, then act.

Each iteration: collect outcomes from the backend, turn them into events (plus a ``Tick`` with
the current time), let the core decide, write every resulting transition, attempt and result in
one SQLite transaction, and only then hand new attempts to the backend and kill the ones the
core wants stopped. A task is therefore never running without the store saying so first.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend, Job, pooled
from shoal.core.events import (
    Dispatch,
    Event,
    Failed,
    Kill,
    Outcome,
    Returned,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    Transition,
)
from shoal.core.machine import Policy, Scheduler
from shoal.core.states import State
from shoal.errors import DefinitionError
from shoal.runtime.status import StatusFile
from shoal.spec.options import Request
from shoal.spec.refs import StoredRef, follow, walk
from shoal.spec.task import render_command
from shoal.spec.workflow import Plan, Record, dumps
from shoal.store.writer import Batch, Writer

POLL = 0.05  # seconds the loop waits for outcomes when nothing happens


@dataclass(slots=True)
class _Acts:
    """What a batch asks of the backend once it is committed."""

    dispatch: list[Dispatch] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class Driver:
    """Runs one plan to the end on one backend, recording everything in the run directory."""

    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        rundir: Path,
        writer: Writer,
        policy: Policy,
        log: logging.Logger,
        on_progress: Callable[[dict[State, int], int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.dir = rundir
        self.writer = writer
        self.log = log
        self.records: list[Record] = plan.records  # ids are 0..n-1, in order
        self.scheduler = Scheduler(backend.nodes(), policy)
        self.status = StatusFile(rundir / "status.json", plan.name, len(plan.records))
        self.on_progress = on_progress
        # Results that some task's arguments refer to are kept in memory (pickled).
        self.needed = {d for r in plan.records if r.has_refs for d in r.deps}
        self.values: dict[int, bytes] = {}
        self.backend_outbox: list[Outcome] = []  # failures found while building jobs
        self.killed: dict[tuple[int, int], Kill] = {}  # attempts this driver asked to stop
        self.tasks_root = str(rundir / "tasks")

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> str:
        b = self.backend
        self.writer.start_checkpoints()
        b.start(self.dir)
        for i, (_, payload) in enumerate(self.plan.functions):
            b.define(i, payload)
        b.warm(*self.workers_wanted(self.plan, b))
        queue = b.prefetch > 0
        requests: dict[int, Request] = {}  # one Request per distinct Options, not per task
        infos = []
        for r in self.plan.records:
            o = r.options
            req = requests.get(id(o))
            if req is None:
                req = requests[id(o)] = o.request
            infos.append(
                TaskInfo(r.id, r.deps, req, o.priority, o.timeout, self._lane(r) if queue else None)
            )
        # Backend threads (process chains) need the GIL right after their child exits; the
        # default 5 ms switch interval would leave them waiting behind the loop for that long.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.001))
        try:
            self._loop(infos)
        finally:
            sys.setswitchinterval(interval)
        state = "failed" if self._any_failed() else "succeeded"
        self.status.write(self.scheduler, state)
        if self.on_progress is not None:
            self.on_progress(self.scheduler.counts, len(self.records))
        return state

    def _loop(self, infos: list[TaskInfo]) -> None:
        # Committing in a second thread so that it overlaps the next poll was tried and measured
        # slower (W1 0.55x against 0.80x): executemany binds parameters holding the GIL, and the
        # two threads then hand the GIL back and forth at the 5 ms switch interval.
        events: list[Event] = [Submitted(time.time(), tuple(infos))]
        del infos
        outcomes: list[Outcome] = []
        last_progress = 0.0
        while True:
            batch, acts = self._decide(events, outcomes)
            if batch.transitions or batch.dispatched or batch.outcomes:
                self.writer.commit(batch)  # persist first ...
            self._act(acts)  # ... then act
            if self.scheduler.done and not self.backend_outbox:
                return
            outcomes = self.backend_outbox + self.backend.poll(0 if self.backend_outbox else POLL)
            self.backend_outbox = []
            events = [self._event(o) for o in outcomes]
            events.append(Tick(time.time()))
            now = time.monotonic()
            if self.on_progress is not None and now - last_progress > 0.1:
                last_progress = now
                self.on_progress(self.scheduler.counts, len(self.records))
            self.status.maybe_write(self.scheduler, self.log)

    @classmethod
    def workers_wanted(cls, plan: Plan, backend: Backend) -> tuple[int, int]:
        """Workers worth starting now, and the most common task width among their tasks."""
        widths = Counter(r.options.cpus for r in plan.records if cls._pooled(r))
        if not widths:
            return 0, 1
        cpus = widths.most_common(1)[0][0]
        cores = sum(len(n.cores) for n in backend.nodes())
        return min(widths[cpus], cores // cpus), cpus

    @staticmethod
    def _isolate(r: Record) -> bool:
        o = r.options
        return bool(o.isolate) if o.isolate is not None else o.gpus > 0

    @staticmethod
    def _pooled(r: Record) -> bool:
        """Runs in a persistent worker (and so may be queued behind another task there)."""
        return pooled(r.kind, Driver._isolate(r), r.options.ranks)

    def _lane(self, r: Record) -> str:
        """Which backend queue runs the task: persistent workers, or child processes."""
        return "pool" if self._pooled(r) else "process"

    def _any_failed(self) -> bool:
        c = self.scheduler.counts
        return bool(c[State.FAILED] or c[State.DEP_FAILED] or c[State.CANCELLED])

    def _event(self, o: Outcome) -> Event:
        now = time.time()
        if o.returned:
            return Returned(now, o.task, o.attempt)
        kill = self.killed.pop((o.task, o.attempt), None) if self.killed else None
        if kill is not None and not o.ok:  # record why it really ended: we stopped it
            o.kind = kill.kind
            o.error = f"{kill.reason}; it was stopped"
        if o.ok:
            if o.task in self.needed and o.result is not None:
                self.values[o.task] = o.result
            return Succeeded(now, o.task, o.attempt)
        reason = first_line(o.error) or o.kind
        return Failed(now, o.task, o.attempt, reason, o.kind)

    def _decide(self, events: list[Event], outcomes: list[Outcome]) -> tuple[Batch, _Acts]:
        commands = self.scheduler.handle(*events)
        batch = Batch(outcomes=outcomes)
        acts = _Acts()
        now = time.time()
        for c in commands:
            if isinstance(c, Transition):
                batch.transitions.append(c)
                if c.new is State.FAILED:
                    self.log.warning(
                        "task %s (%s) failed: %s", c.task, self.records[c.task].name, c.reason
                    )
            elif isinstance(c, Dispatch):
                acts.dispatch.append(c)
                batch.dispatched.append((c.task, c.attempt, c.placement, now))
            elif isinstance(c, Kill):
                acts.kills.append(c)
        return batch, acts

    def _act(self, acts: _Acts) -> None:
        jobs = []
        for d in acts.dispatch:
            job = self._job(d)
            if isinstance(job, Outcome):  # could not even build it: fail at once
                self.backend_outbox.append(job)
            else:
                jobs.append(job)
        if jobs:
            self.backend.submit(jobs)
        for k in acts.kills:
            self.log.info("stopping task %s attempt %s: %s", k.task, k.attempt, k.reason)
            self.killed[(k.task, k.attempt)] = k
            self.backend.cancel(k.task, k.attempt)

    # -- building jobs --------------------------------------------------------------------
    def _resolve(self, r: Record) -> tuple[tuple[Any, ...], dict[str, Any]]:
        cache: dict[int, Any] = {}

        def visit(ref: Any) -> Any:
            assert isinstance(ref, StoredRef)
            if ref.task not in cache:
                cache[ref.task] = pickle.loads(self.values[ref.task])
            source = self.records[ref.task]
            return follow(cache[ref.task], ref.path, f"output of {source.name!r} (#{source.id})")

        args, kwargs = pickle.loads(r.payload)
        return walk(args, visit), walk(kwargs, visit)

    def _job(self, d: Dispatch) -> Job | Outcome:
        r = self.records[d.task]
        o = r.options
        job = Job(
            task=r.id,
            attempt=d.attempt,
            name=r.name,
            kind=r.kind,
            placement=d.placement,
            taskdir=Path(f"{self.tasks_root}/{r.id}"),
            function=r.function,
            workdir=r.workdir,
            env=r.env or {},
            ranks=o.ranks,
            cpus=o.cpus,
            after=d.after,
            isolate=self._isolate(r),
        )
        try:
            if r.kind == "python":
                if r.has_refs:
                    job.payload = dumps(self._resolve(r))
                else:
                    job.payload = r.payload
            else:
                assert r.template is not None
                _, values = self._resolve(r)
                job.argv, job.shell = render_command(r.template, values)
        except (DefinitionError, KeyError, IndexError, ValueError, TypeError) as err:
            msg = f"cannot prepare the inputs: {err}"
            now = time.time()
            return Outcome(r.id, d.attempt, False, now, now, "error", msg)
        return job
