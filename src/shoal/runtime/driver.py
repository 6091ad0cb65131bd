"""The one loop: events in, persist, then act.

Each iteration: collect outcomes from the backend, turn them into events (plus a ``Tick`` with
the current time), let the core decide, write every resulting transition, attempt and result in
one SQLite transaction, and only then hand new attempts to the backend and kill the ones the
core wants stopped. A task is therefore never running without the store saying so first.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend, Job, pooled
from shoal.backends.execute import Outputs, with_inputs
from shoal.core.events import (
    Command,
    Dispatch,
    Failed,
    Kill,
    Outcome,
    Refused,
    Restored,
    Returned,
    Stimulus,
    Stop,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    Transition,
)
from shoal.core.machine import Policy, Scheduler
from shoal.core.resources import Pool
from shoal.core.states import State
from shoal.errors import DefinitionError, ResourceError, StoreError
from shoal.runtime.requests import Requests
from shoal.runtime.status import StatusFile
from shoal.runtime.steer import Steering
from shoal.spec.lower import Functions, Plan, Record, dumps, lower
from shoal.spec.options import Request
from shoal.spec.refs import StoredRef, follow, walk
from shoal.spec.response import decode
from shoal.spec.retry import Backoff
from shoal.spec.steer import Rule, Strategy, Tracker
from shoal.spec.task import Task, detached, render_command
from shoal.store.pickles import loads
from shoal.store.writer import Batch, Writer

KEPT = 256 << 20  # bytes of outputs the driver keeps in memory for dependents (_keep)
CARRY = 1 << 16  # bytes of other tasks' outputs a task's arguments may carry (_payload)
POLL = 0.05  # seconds the loop waits for outcomes when nothing happens
# Enum attribute access costs a Python-level call in 3.11: the per-transition checks use these.
READY, RETRYING, FAILED = State.READY, State.RETRYING, State.FAILED
QUEUED, RUNNING = State.QUEUED, State.RUNNING
ROUNDS = 50  # rounds of handler actions handled within one loop iteration
HOUSEKEEP = 1.0  # seconds between checks off the hot path (the store still there, ...)


class Clock:
    """The time the core is given: the wall time when the driver started plus the monotonic
    time since. Durations (timeouts, retry back-off, reserve_after, interval rules) are
    measured on it, so a step of the system clock (NTP, a suspended laptop, a person) neither
    fires every timeout at once nor delays them; records stay close to wall time. What the
    user gave as wall time (``stop_at``) is compared with the wall clock (Driver._stops)."""

    __slots__ = ("mono", "wall")

    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = time.monotonic()

    def __call__(self) -> float:
        return self.wall + (time.monotonic() - self.mono)


@dataclass(slots=True)
class _Acts:
    """What a batch asks of the backend once it is committed."""

    dispatch: list[Dispatch] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)


def check_resources(records: list[Record], pool: Pool) -> None:
    """Refuse tasks that no node can ever hold, naming the first such task (one check per
    distinct request): for a new run, for work added to a live one, and for retries."""
    seen: set[Request] = set()
    for r in records:
        req = r.options.request
        if req in seen:
            continue
        seen.add(req)
        why = pool.refusal(req)
        if why:
            raise ResourceError(
                f"task {r.name!r} (#{r.id}) can never start: {why}. Lower its request, or, "
                "to test on a small machine, pretend a bigger node: "
                "wf.run(cpus=..., gpus=..., memory=...)."
            )


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
        *,
        rules: list[Rule] | None = None,
        strategies: list[Strategy] | None = None,
        tracked: dict[str, Tracker] | None = None,
        ids: dict[int, int] | None = None,
        functions: Functions | None = None,
        restore: Any = None,
        born: float | None = None,
        stop_at: float | None = None,
        stop_mode: str = "cancel",
        default_retry: Backoff | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.dir = rundir
        self.writer = writer
        self.log = log
        self.records: list[Record] = plan.records  # ids are 0..n-1, in order
        self.clock = Clock()
        self.gone = ""  # why the store cannot keep the run any more (Driver._housekeep)
        self.scheduler = Scheduler(backend.nodes(), policy)
        self.status = StatusFile(rundir / "status.json", plan.name, len(plan.records))
        self.on_progress = on_progress
        # Results that some task's arguments refer to are kept in memory (pickled), the newest
        # KEPT bytes of them: older ones are read back from the store when a task needs them.
        self.needed = {d for r in plan.records if r.has_refs for d in r.deps}
        self.values: dict[int, bytes] = {}
        self.kept = 0  # bytes in self.values
        self.alias: dict[int, int] = {}  # task -> the task that replaced it (Response)
        self.gate_of: dict[int, tuple[int, ...]] = {}  # task -> its Response's gate tasks
        self.backend_outbox: list[Outcome] = []  # failures found while building jobs
        # Failures found while building a job queued behind another: reported when the core
        # starts that attempt, as the backend would have (an outcome of a queued attempt
        # would break the contract), and forgotten if the attempt is taken back first.
        self.doomed: dict[int, Outcome] = {}
        self.killed: dict[tuple[int, int], Kill] = {}  # attempts this driver asked to stop
        self.tasks_root = str(rundir / "tasks")
        self.ids = ids if ids is not None else {}  # handle key -> id (shared with the Run)
        if functions is None:
            functions = Functions()
            functions.count = len(plan.functions)
        self.functions = functions
        self.batch = Batch()
        self.extra: list[Stimulus] = []  # events found while turning outcomes into events
        self.queue = backend.prefetch > 0
        self.shapes: dict[tuple[int, str], tuple[Any, Request, str | None]] = {}
        self.pool = Pool(tuple(backend.nodes()))  # for refusing added work with a clear message
        self.steering: Steering | None = None
        if rules or strategies or tracked or any(r.options.tags for r in plan.records):
            self.steering = Steering(self, rules or [], strategies or [], tracked, self.clock())
            self.steering.note_tags(plan.records)
        self.default_retry = default_retry  # the run's policy for tasks without their own
        self.restore = restore  # a Snapshot of a resumed run (shoal.store.recover), or None
        if restore is not None:
            self.alias.update(restore.aliases)
            self.gate_of.update(restore.gate_of)
        self.born = born  # the plan's first transitions were stored then (Writer.add_plan)
        self.stop_at = stop_at  # a deadline (epoch seconds): stop starting tasks then
        self.stop_mode = stop_mode  # "cancel" running tasks on a stop, or let them "finish"
        self.signalled = ""  # set by the signal handler: stop gracefully
        self.interrupted = ""  # why the run stopped early (a signal, the deadline)
        self.requests = Requests(self)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> str:
        """Drive the run to its end and return its state. An internal error (any exception
        but an interrupt) is written with its traceback to shoal.log, and the run is recorded
        ``crashed`` with the reason in the store (``crash_reason``) and in status.json before
        it propagates; ``shoal resume`` carries on from what the store holds."""
        try:
            return self._run()
        except Exception as err:
            if not self.gone:  # not an internal error: said where it was found
                self._crashed(err)
            raise

    def _crashed(self, err: Exception) -> None:
        reason = f"{type(err).__name__}: {first_line(str(err))}".rstrip(": ")
        self.log.error(
            "internal error of the driver, the run crashed (resume with shoal resume %s)",
            self.dir,
            exc_info=err,
        )
        try:
            self.status.write(self.scheduler, "crashed", {"reason": reason})
        except Exception as e:  # the reason is in the log whatever happens here
            self.log.error("cannot write %s: %s", self.status.path, e)
        try:
            self.writer.set_meta(state="crashed", crash_reason=reason)
        except Exception as e:
            self.log.error("cannot record the crash in the store: %s", e)

    def _run(self) -> str:
        b = self.backend
        if self.restore is not None:
            self.writer.set_meta(crash_reason=None)  # a crash before is over now
        self.writer.start_checkpoints()
        b.start(self.dir)
        for i, (_, payload) in enumerate(self.plan.functions):
            b.define(self.plan.first_function + i, payload)
        b.warm(*self.workers_wanted(self.plan, b))
        infos = [self._info(r) for r in self.plan.records]
        # Backend threads (process chains) need the GIL right after their child exits; the
        # default 5 ms switch interval would leave them waiting behind the loop for that long.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.001))
        try:
            self._loop(infos)
        finally:
            sys.setswitchinterval(interval)
        st = self.steering
        if st is not None:
            st.end(self.clock())
            self.writer.commit(Batch(rules=st.rows(every=True)))
        if not self.scheduler.done:  # stopped early: the rows of waiting tasks say exactly how
            waiting = [
                (e.state.value, t)
                for t, e in self.scheduler.tasks.items()
                if e.state in (State.READY, State.QUEUED)
            ]
            if waiting:
                self.writer.set_states(waiting)
        if self.interrupted:
            state = "interrupted"
        elif self._any_failed() or (st is not None and st.error):
            state = "failed"
        elif self.scheduler.stopped:
            state = "stopped"
        else:
            state = "succeeded"
        if self.scheduler.stopped:
            self.writer.set_meta(stop_reason=self.scheduler.stopped)
            self.log.info("run stopped: %s", self.scheduler.stopped)
        self.status.write(self.scheduler, state, self._extra_status())
        if self.on_progress is not None:
            self.on_progress(self.scheduler.counts, len(self.records))
        return state

    def _info(self, r: Record) -> TaskInfo:
        o = r.options
        # One Request and lane per distinct Options and kind (a million tasks share a few).
        key = (id(o), r.kind)
        hit = self.shapes.get(key)
        if hit is None or hit[0] is not o:
            lane = self._lane(r) if self.queue else None
            hit = self.shapes[key] = (o, o.request, lane)
        retry = o.retry if o.retry is not None else self.default_retry
        estimate = o.estimate or 0.0
        # A Python task in the workers may follow the task it waits for (its output is then
        # resolved in the worker that ran that task); a command's line is rendered here.
        follow = hit[2] == "pool" and r.kind == "python" and bool(r.deps)
        return TaskInfo(
            r.id, r.deps, hit[1], o.priority, o.timeout, hit[2], retry, estimate, follow
        )

    def _loop(self, infos: list[TaskInfo]) -> None:
        # Committing in a second thread so that it overlaps the next poll was tried and measured
        # slower (W1 0.55x against 0.80x): executemany binds parameters holding the GIL, and the
        # two threads then hand the GIL back and forth at the 5 ms switch interval.
        now = self.clock()
        st = self.steering
        snap = self.restore
        events: list[Stimulus]
        if snap is not None:
            states = tuple(snap.states)
            events = [Restored(now, tuple(infos), states, tuple(snap.attempts), tuple(snap.gates))]
            if st is not None:
                st.resumed(snap)
        else:
            events = [Submitted(self.born or now, tuple(infos))]
            if st is not None:
                st.start(now)
                events.extend(st.take())
        del infos
        outcomes: list[Outcome] = []
        last_progress = 0.0
        last_check = time.monotonic()
        s = self.scheduler
        first = snap is not None  # a resumed run takes the requests that waited for it first
        while True:
            try:
                commands = s.handle(*events)
            except Refused as err:
                self._refused(err, events, outcomes)  # raises
            if first:
                first = False
                self.requests.poll(now, force=True)
            if self.requests.commands:  # what requests from other processes changed
                commands = self.requests.commands + commands
                self.requests.commands = []
            if st is not None:
                commands = self._steer(commands, outcomes)
            batch, acts = self._decide(commands, outcomes)
            if batch:
                self.writer.commit(batch)  # persist first ...
            self._act(acts)  # ... then act
            self.batch = Batch()
            ended = s.done or (s.stopped and s.settled)
            if ended and not self.backend_outbox and (st is None or not st.stimuli):
                return
            wait = 0 if self.backend_outbox or (st is not None and st.stimuli) else POLL
            outcomes = self.backend_outbox + self.backend.poll(wait)
            self.backend_outbox = []
            now = self.clock()  # one reading for the iteration's outcomes and its Tick
            events = [self._event(o, now) for o in outcomes]
            if self.extra:
                events.extend(self.extra)
                self.extra = []
            events.append(Tick(now))
            events.extend(self._stops(now))
            self.requests.poll(now)  # its commands join the next iteration's
            if st is not None:
                st.tick(now)
                events.extend(st.take())
            mono = time.monotonic()
            if mono - last_check >= HOUSEKEEP:
                last_check = mono
                self._housekeep()
            if self.on_progress is not None and mono - last_progress > 0.1:
                last_progress = mono
                self.on_progress(s.counts, len(self.records))
            self.status.maybe_write(s, self.log, self._extra_status)

    def _housekeep(self) -> None:
        """Checks that need not run every iteration (at most once a second): the store's
        own (checkpoints, see Writer.housekeep), and that the store is still there. A run
        whose directory or database was deleted (``rm -rf RUN``) would go on committing into
        an unlinked file and lose every result: it stops now, and says so."""
        gone = self.writer.housekeep()
        if not gone:
            return
        self.gone = (
            f"{gone}: the run cannot record anything any more, so it stopped (its running "
            "tasks were stopped). What it recorded went with the deleted files; to run the "
            "workflow, start it again (a new run directory)."
        )
        self.log.error("%s", self.gone)
        print(f"shoal: {self.gone}", file=sys.stderr)
        raise StoreError(self.gone)

    def _refused(self, err: Refused, events: list[Stimulus], outcomes: list[Outcome]) -> None:
        """The core refused an event of this iteration (a backend's report it cannot accept,
        or a request it was not asked one at a time). Commit what the events before it did,
        then stop as crashed: going on would wait for an outcome already given. Nothing is
        handed to the backend; a resume runs again what was in flight."""
        what = err.event.label() if err.event is not None else "an event"
        self.log.error(
            "the scheduler refused %s (task %s, attempt %s): %s", what, err.task, err.attempt, err
        )
        k = next((i for i, ev in enumerate(events) if ev is err.event), len(events))
        batch, _ = self._decide(err.commands, outcomes[:k])  # the refused one's is not kept
        if batch:
            self.writer.commit(batch)
        raise err

    def _stops(self, now: float) -> list[Stimulus]:
        """A signal or the deadline stops the run gracefully (once): nothing new starts, and
        the running tasks finish or are stopped (``stop_mode``); the run is resumable."""
        if self.interrupted:
            return []
        why = ""
        if self.signalled:
            why = f"stopped by {self.signalled}"
        elif self.stop_at is not None and time.time() >= self.stop_at:  # the user's wall time
            when = time.strftime("%H:%M:%S", time.localtime(self.stop_at))
            why = f"the deadline ({when}) was reached"
        if not why:
            return []
        self.interrupted = why
        finish = self.stop_mode == "finish"
        how = "running tasks finish" if finish else "running tasks are stopped"
        self.log.warning(
            "%s: nothing new starts, %s; resume with shoal resume %s", why, how, self.dir
        )
        return [Stop(now, finish, why)]

    def _steer(self, commands: list[Command], outcomes: list[Outcome]) -> list[Command]:
        """Let rules and strategies react to this iteration, and feed their actions to the
        core at once (a few rounds), so that all of it is committed together."""
        st = self.steering
        assert st is not None
        by_task = {o.task: o for o in outcomes} if outcomes else {}
        new = commands
        for _ in range(ROUNDS):
            now = self.clock()
            if st.active:
                st.observe(new, by_task, now)
            st.idle(now)
            stimuli = st.take()
            if not stimuli:
                break
            by_task = {}
            new = []
            for ev in stimuli:
                try:
                    new.extend(self.scheduler.handle(ev))
                except DefinitionError as err:  # checked when asked; refused here all the same
                    self.log.warning("a rule's request was refused: %s", err)
            commands.extend(new)
        self.batch.rules.extend(st.rows())
        return commands

    def _extra_status(self) -> dict[str, Any]:
        return self.steering.summary() if self.steering is not None else {}

    @classmethod
    def workers_wanted(cls, plan: Plan, backend: Backend) -> tuple[int, int, bool]:
        """Workers worth starting now, the most common task width among their tasks, and
        whether any of those tasks are Python tasks (not only commands)."""
        many = backend.pooled_commands
        pooled = [r for r in plan.records if cls._pooled(r, many)]
        widths = Counter(r.options.cpus for r in pooled)
        if not widths:
            return 0, 1, False
        cpus = widths.most_common(1)[0][0]
        cores = sum(len(n.cores) for n in backend.nodes())
        python = any(r.kind != "command" for r in pooled)
        return min(widths[cpus], cores // cpus), cpus, python

    @staticmethod
    def _isolate(r: Record) -> bool:
        o = r.options
        return bool(o.isolate) if o.isolate is not None else o.gpus > 0

    @staticmethod
    def _pooled(r: Record, commands: bool) -> bool:
        """Runs in a persistent worker (and so may be queued behind another task there)."""
        return pooled(r.kind, Driver._isolate(r), r.options.ranks, commands)

    def _lane(self, r: Record) -> str:
        """Which backend queue runs the task: persistent workers, or child processes."""
        return "pool" if self._pooled(r, self.backend.pooled_commands) else "process"

    def _any_failed(self) -> bool:
        # Cancelled tasks do not count: a task is cancelled only on purpose (shoal cancel,
        # attach().cancel, a rule or strategy), with what depends on it (see _event).
        c = self.scheduler.counts
        return bool(c[State.FAILED] or c[State.DEP_FAILED])

    def _event(self, o: Outcome, now: float) -> Stimulus:
        if o.returned:
            if self.killed:  # it never started: nothing was stopped
                self.killed.pop((o.task, o.attempt), None)
            return Returned(now, o.task, o.attempt)
        kill = self.killed.pop((o.task, o.attempt), None) if self.killed else None
        if not self.scheduler.in_flight(o.task, o.attempt):
            return self._stale(o, now)
        if kill is not None and not o.ok:  # record why it really ended: we stopped it
            o.kind = kill.kind
            o.error = f"{kill.reason}; it was stopped"
        elif o.kind == "cancelled" and not o.ok and o.started is not None:
            # It ran and was cancelled by someone else (flux cancel, a batch system): not a
            # decision of this run, which `cancelled` stands for, but an attempt lost.
            o.kind = "lost"
            o.error = f"cancelled outside shoal while it ran ({first_line(o.error) or 'cancelled'})"
        if o.ok:
            event: Stimulus = Succeeded(now, o.task, o.attempt)
            if o.kind == "response":
                event = self._respond(o, now)
            if o.ok and o.task in self.needed and o.result is not None:
                self._keep(o.task, o.result)
            return event
        reason = first_line(o.error) or o.kind
        return Failed(now, o.task, o.attempt, reason, o.kind, o.exit_code)

    def _stale(self, o: Outcome, now: float) -> Stimulus:
        """The report of an attempt no longer in flight: one taken back before it started
        (a rerun upstream, a run stopping) or given back, that ran anyway before the stop
        reached it. Its attempt row records what happened; its output is not the task's
        (it may have used an old input) and a Response in it adds nothing. The core ignores
        the event."""
        self.log.info(
            "task %s attempt %s ended (%s) after it was taken back: its outcome is ignored",
            o.task,
            o.attempt,
            "succeeded" if o.ok else o.kind or "failed",
        )
        o.result = None
        if o.ok:
            return Succeeded(now, o.task, o.attempt)
        return Failed(now, o.task, o.attempt, first_line(o.error) or o.kind, o.kind, o.exit_code)

    # -- work added while the run goes on ----------------------------------------------------
    def _respond(self, o: Outcome, now: float) -> Stimulus:
        """Turn a task's Response into the work it asks for, or fail the task if it is
        invalid (the error names what is wrong)."""
        r = self.records[o.task]
        assert o.result is not None
        try:
            output, resp = decode(o.result)
            o.result = output
            new = list({t.key: t for t in (*resp.add, *resp.detour, *resp.replace)}.values())
            infos = self.add_work(new, f"response of {r.name} (#{r.id})") if new else []
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # its classes' code: fail the task
            o.ok = False
            o.result = None
            o.kind = "error"
            why = err if isinstance(err, DefinitionError) else f"{type(err).__name__}: {err}"
            o.error = f"the task returned an invalid Response: {why}"
            self.log.warning("task %s (%s): %s", r.id, r.name, o.error)
            return Failed(now, o.task, o.attempt, o.error, "error")
        by_key = {t.key: t.id for t in new if t.id is not None}  # lower() gave every one an id
        gate = tuple(by_key[t.key] for t in (*resp.detour, *resp.replace))
        if gate:
            first = min(i.id for i in infos)  # tasks from here on came with this Response
            self.gate_of[o.task] = gate
            self.batch.gates.append((o.task, gate, first))
        if resp.replace:
            standin = by_key[resp.replace[-1].key]
            self.alias[o.task] = standin
            self.batch.aliases.append((o.task, standin))
            if o.task in self.needed:
                self.needed.add(standin)
            # Added and detour tasks that use this task's output get the replacement's, so
            # they wait for it (the replacement itself may use the output as it is now).
            mine = {by_key[t.key] for t in resp.replace}
            for i, info in enumerate(infos):
                added = self.records[info.id]
                if info.id not in mine and o.task in added.deps:
                    added.deps = (*added.deps, standin)
                    infos[i] = self._info(added)
                    self.needed.add(standin)
        if resp.stop_run:
            self.extra.append(Stop(now, True, f"task {r.name} (#{r.id}) stopped the run"))
        return Succeeded(
            now,
            o.task,
            o.attempt,
            add=tuple(infos),
            gate=gate,
            skip=resp.stop_children,
            response=True,
        )

    def add_work(self, tasks: list[Task], origin: str) -> list[TaskInfo]:
        """Validate and lower tasks added to the live run; they are stored with the next
        commit, before any of them is dispatched. Raises DefinitionError (nothing changed)."""
        with detached():
            plan = lower(tasks, self.plan.name, len(self.records), self.ids, self.functions)
        if self.alias or self.gate_of:
            for r in plan.records:
                r.deps = self._through(r.deps)
        check_resources(plan.records, self.pool)
        for t in tasks:
            if t.id is not None:
                self.ids[t.key] = t.id
        for i, (_, payload) in enumerate(plan.functions):
            self.backend.define(plan.first_function + i, payload)
        self.records.extend(plan.records)
        for r in plan.records:
            if r.has_refs:
                self.needed.update(r.deps)
        self.batch.plans.append((plan, origin))
        self.status.total = len(self.records)
        if self.steering is not None:
            self.steering.note_tags(plan.records)
        self.log.info("%s added %d task(s)", origin, len(plan.records))
        return [self._info(r) for r in plan.records]

    def _through(self, deps: tuple[int, ...]) -> tuple[int, ...]:
        """Dependencies of new work, plus what stands behind them: the replacements of a
        replaced task (its output is theirs) and the detours its dependents wait for."""
        out = list(deps)
        todo = list(deps)
        while todo:
            d = todo.pop()
            more = [*self.gate_of.get(d, ()), *((self.alias[d],) if d in self.alias else ())]
            for m in more:
                if m not in out:
                    out.append(m)
                    todo.append(m)
        return tuple(out)

    def retry_info(self, task: int, changes: dict[str, Any]) -> TaskInfo | None:
        """The task's new TaskInfo when a retry changes its options (None: unchanged)."""
        if not changes:
            return None
        r = self.records[task]
        options = r.options.merged(f"retry of task {r.name!r} (#{task})", **changes)
        check_resources([dataclasses.replace(r, options=options)], self.pool)
        r.options = options
        self.batch.options.append((task, options))
        return self._info(r)

    def _escalated(self, task: int) -> None:
        """Store what a retry policy escalated (timeout, memory), so that a resume keeps it."""
        info = self.scheduler.tasks[task].info
        r = self.records[task]
        o = r.options
        if info.timeout != o.timeout or info.request.memory != o.memory:
            r.options = dataclasses.replace(o, timeout=info.timeout, memory=info.request.memory)
            self.batch.options.append((task, r.options))

    def task_id(self, task: Task) -> int | None:
        return self.ids.get(task.key)

    def value(self, task: int) -> Any:
        """The result of a task that succeeded (through replacements)."""
        task = self._standin(task)
        if self.scheduler.state(task) is not State.SUCCEEDED:
            raise DefinitionError(
                f"task #{task} has no result: it is {self.scheduler.state(task).value}"
            )
        return loads(self._pickled(task), self._label(task))

    def _standin(self, task: int, asking: Record | None = None) -> int:
        """The task whose output stands for ``task``'s: its replacement (Response), through
        chains of them. The tasks of a replacement (``asking``: one whose inputs are being
        prepared) use the replaced task's own output, as it returned it; every other task,
        detours of the same Response included, waits for the replacement and gets its."""
        while task in self.alias:
            standin = self.alias[task]
            if asking is not None and (
                standin == asking.id
                or (asking.id in self.gate_of.get(task, ()) and standin not in asking.deps)
            ):
                break
            task = standin
        return task

    def _keep(self, task: int, data: bytes) -> None:
        """Keep an output that tasks' arguments use, dropping the oldest kept beyond KEPT
        bytes (a million-task DAG must not hold every output in the driver's memory)."""
        old = self.values.pop(task, None)
        if old is not None:
            self.kept -= len(old)
        self.values[task] = data
        self.kept += len(data)
        while self.kept > KEPT and len(self.values) > 1:
            first = next(iter(self.values))
            self.kept -= len(self.values.pop(first))

    def _pickled(self, task: int) -> bytes:
        data = self.values.get(task)
        if data is None:
            data = self.writer.result(task)
            if data is None:
                raise DefinitionError(f"the result of task #{task} is not in the store")
        return data

    def _decide(self, commands: list[Command], outcomes: list[Outcome]) -> tuple[Batch, _Acts]:
        batch = self.batch
        batch.outcomes = outcomes
        acts = _Acts()
        now = self.clock()
        born = self.born is not None
        for c in commands:
            if isinstance(c, Transition):
                if born and c.old is None and c.task < len(self.plan.records):
                    batch.born.append(c)  # stored with the plan already
                    continue
                if self.doomed and c.task in self.doomed and c.old is QUEUED:
                    doomed = self.doomed.pop(c.task)
                    if c.new is RUNNING and c.attempt == doomed.attempt:
                        self.backend_outbox.append(doomed)
                batch.transitions.append(c)
                if c.old is RETRYING and c.new is READY:
                    self._escalated(c.task)
                if c.new is FAILED:
                    self.log.warning(
                        "task %s (%s) failed: %s", c.task, self.records[c.task].name, c.reason
                    )
            elif isinstance(c, Dispatch):
                acts.dispatch.append(c)
                batch.dispatched.append((c.task, c.attempt, c.placement, now))
            elif isinstance(c, Kill):
                acts.kills.append(c)
        self.born = None  # only the first iteration sees the plan's births
        return batch, acts

    def _act(self, acts: _Acts) -> None:
        jobs = []
        for d in acts.dispatch:
            job = self._job(d)
            if isinstance(job, Outcome):  # could not even build it: fail when it starts
                if d.after is None:
                    self.backend_outbox.append(job)
                else:
                    self.doomed[d.task] = job
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
            task = self._standin(ref.task, r)
            if task not in cache:
                cache[task] = loads(self._pickled(task), self._label(task))
            return follow(cache[task], ref.path, self._label(ref.task))

        args, kwargs = loads(r.payload, f"the arguments of {r.name!r} (#{r.id})")
        return walk(args, visit), walk(kwargs, visit)

    def _payload(self, r: Record, local: int | None = None) -> bytes:
        """The arguments of a task that uses other tasks' outputs: when those are small, they
        travel with the arguments and the references are resolved where the task runs (the
        driver does least); large ones are resolved here, so that only the parts selected
        travel. A follower (``local``: the task it follows, whose output does not exist yet)
        gets every other output, whatever its size, and the worker resolves ``local``'s from
        the result it has just made."""
        if local is not None:
            outputs: Outputs = {}
            for d in r.deps:  # a dependency may stand for ``local`` (a Response replaced it)
                standin = self._standin(d, r)
                data = None if standin == local else self._pickled(standin)
                outputs[d] = (self._label(d), data)
            return with_inputs(r.payload, outputs)
        outputs = {}
        size = 0
        for d in r.deps:
            data = self.values.get(self._standin(d, r))
            if data is None:
                break
            size += len(data)
            if size > CARRY:
                break
            outputs[d] = (self._label(d), data)
        else:
            return with_inputs(r.payload, outputs)
        return dumps(self._resolve(r))

    def _label(self, task: int) -> str:
        """How errors name a task's output."""
        source = self.records[task]
        return f"output of {source.name!r} (#{source.id})"

    def _job(self, d: Dispatch) -> Job | Outcome:
        r = self.records[d.task]
        o = r.options
        job = Job(
            task=r.id,
            attempt=d.attempt,
            name=r.name,
            kind=r.kind,
            placement=d.placement,
            folder=f"{self.tasks_root}/{r.id}",
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
                if d.follows:
                    job.payload = self._payload(r, local=d.after)
                    job.follows = True
                elif r.has_refs:
                    job.payload = self._payload(r)
                else:
                    job.payload = r.payload
            else:
                assert r.template is not None
                if r.has_refs:
                    values = self._resolve(r)[1]
                else:
                    values = loads(r.payload, f"the arguments of {r.name!r} (#{r.id})")[1]
                job.argv, job.shell = render_command(r.template, values)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # the task's own data: fail the task
            # Unpickling an argument or an output runs the user's code and imports their
            # modules: whatever it raises (SystemExit included) fails this task and what
            # depends on it, never the run (a resume would crash at the same place).
            text = str(err) if isinstance(err, DefinitionError) else f"{type(err).__name__}: {err}"
            msg = f"cannot prepare the inputs: {text}"
            self.log.warning("task %s (%s): %s", r.id, r.name, msg)
            now = self.clock()
            return Outcome(r.id, d.attempt, False, now, now, "error", msg)
        return job
