"""The one loop: stimuli in, persist, then act.

Each iteration: collect outcomes from the backend, turn them into stimuli (plus a ``Tick`` with
the current time), let the core decide, write every resulting transition, attempt and result in
one SQLite transaction, and only then hand new attempts to the backend and kill the ones the
core wants stopped. A task is therefore never running without the store saying so first.

Rules of this module: the driver is the loop and nothing else. The run's records and the work
added at run time are :mod:`shoal.runtime.work`'s; outputs in memory and stand-ins are
:mod:`shoal.runtime.outputs`'s; building jobs is :mod:`shoal.runtime.jobs`'s; requests from
other processes and steering get narrow interfaces, never the driver itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend, Job
from shoal.core.commands import Born, Command, Dispatch, Kill, Transition
from shoal.core.events import Outcome
from shoal.core.machine import Scheduler
from shoal.core.policy import Policy
from shoal.core.refusals import Refused
from shoal.core.states import State
from shoal.core.stimuli import (
    Failed,
    Restored,
    Returned,
    Stimulus,
    StopRequested,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
)
from shoal.errors import DefinitionError, StoreError
from shoal.runtime.jobs import Jobs
from shoal.runtime.options import StopMode
from shoal.runtime.outputs import OutputCache
from shoal.runtime.requests import Requests
from shoal.runtime.status import StatusFile
from shoal.runtime.steering import Steering
from shoal.runtime.work import HandleIds, Work, check_resources, workers_wanted
from shoal.spec.kinds import Failure
from shoal.spec.lower import Functions, Plan, Record
from shoal.spec.retry import Backoff
from shoal.spec.steer import Rule, Strategy, Tracker
from shoal.store.writer import Batch, Writer

__all__ = ["Clock", "Driver", "check_resources", "workers_wanted"]

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


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class _SteeringHost:
    """What steering sees of the run (runtime.steering.Host)."""

    def __init__(self, scheduler: Scheduler, work: Work, outputs: OutputCache) -> None:
        self.scheduler = scheduler
        self.records = work.records
        self.log = work.log
        self.add_work = work.add
        self.retry_info = work.retry_info
        self.task_id = work.task_id
        self.value = outputs.value


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
        ids: HandleIds | None = None,
        functions: Functions | None = None,
        restore: Any = None,
        born: float | None = None,
        stop_at: float | None = None,
        stop_mode: StopMode = "cancel",
        default_retry: Backoff | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.dir = rundir
        self.writer = writer
        self.log = log
        self.clock = Clock()
        self.gone = ""  # why the store cannot keep the run any more (Driver._housekeep)
        self.scheduler = Scheduler(backend.nodes(), policy)
        self.status = StatusFile(rundir / "status.json", plan.name, len(plan.records))
        self.on_progress = on_progress
        self.work = Work(
            plan, backend, log, ids=ids, functions=functions, default_retry=default_retry
        )
        self.records = self.work.records
        self.outputs = OutputCache(self.work, writer.result, self.scheduler.state)
        self.jobs = Jobs(self.work, self.outputs, str(rundir / "tasks"), self.clock, log)
        self.backend_outbox: list[Outcome] = []  # failures found while building jobs
        # Failures found while building a job queued behind another: reported when the core
        # starts that attempt, as the backend would have (an outcome of a queued attempt
        # would break the contract), and forgotten if the attempt is taken back first.
        self.doomed: dict[int, Outcome] = {}
        self.killed: dict[tuple[int, int], Kill] = {}  # attempts this driver asked to stop
        self.work.on_added.append(self._added)
        self.steering: Steering | None = None
        if rules or strategies or tracked or any(r.options.tags for r in plan.records):
            host = _SteeringHost(self.scheduler, self.work, self.outputs)
            self.steering = Steering(host, rules or [], strategies or [], tracked, self.clock())
            self.steering.note_tags(plan.records)
        self.restore = restore  # a Snapshot of a resumed run (shoal.store.recover), or None
        if restore is not None:
            self.work.alias.update(restore.aliases)
            self.work.gate_of.update(restore.gate_of)
        self.born = born  # the plan's first transitions were stored then (Writer.add_plan)
        self.stop_at = stop_at  # a deadline (epoch seconds): stop starting tasks then
        self.stop_mode = stop_mode  # "cancel" running tasks on a stop, or let them "finish"
        self.signalled = ""  # set by the signal handler: stop gracefully
        self.interrupted = ""  # why the run stopped early (a signal, the deadline)
        self.requests = Requests(self.scheduler, self.work, writer.conn, log)

    def _added(self, records: list[Record]) -> None:
        self.status.total = len(self.records)
        if self.steering is not None:
            self.steering.note_tags(records)

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
        b.warm(*workers_wanted(self.plan, b))
        # Backend threads (process chains) need the GIL right after their child exits; the
        # default 5 ms switch interval would leave them waiting behind the loop for that long.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.001))
        try:
            self._loop([self.work.info(r) for r in self.plan.records])  # freed as it starts
        finally:
            sys.setswitchinterval(interval)
        return self._end()

    def _end(self) -> str:
        """Record how the run ended and return its state."""
        s = self.scheduler
        st = self.steering
        if st is not None:
            st.end(self.clock())
            self.writer.commit(Batch(rules=st.rows(every=True)))
        if not s.done:  # stopped early: the rows of waiting tasks say exactly how
            waiting = [(s.state(t).value, t) for t in s.in_state(State.READY, State.QUEUED)]
            if waiting:
                self.writer.set_states(waiting)
        if self.interrupted:
            state = "interrupted"
        elif self._any_failed() or (st is not None and st.error):
            state = "failed"
        elif s.stopped:
            state = "stopped"
        else:
            state = "succeeded"
        if s.stopped:
            self.writer.set_meta(stop_reason=s.stopped)
            self.log.info("run stopped: %s", s.stopped)
        self.status.write(s, state, self._extra_status())
        if self.on_progress is not None:
            self.on_progress(dict(s.counts), len(self.records))
        return state

    def _first(self, infos: list[TaskInfo], now: float) -> list[Stimulus]:
        """The stimuli of the first iteration: the plan submitted, or a resumed run restored."""
        st = self.steering
        snap = self.restore
        if snap is not None:
            states = tuple(snap.states)
            if st is not None:
                st.resumed(snap)
            return [Restored(now, tuple(infos), states, tuple(snap.attempts), tuple(snap.gates))]
        events: list[Stimulus] = [Submitted(self.born or now, tuple(infos))]
        if st is not None:
            st.start(now)
            events.extend(st.take())
        return events

    def _loop(self, infos: list[TaskInfo]) -> None:
        # Committing in a second thread so that it overlaps the next poll was tried and measured
        # slower (W1 0.55x against 0.80x): executemany binds parameters holding the GIL, and the
        # two threads then hand the GIL back and forth at the 5 ms switch interval.
        now = self.clock()
        st = self.steering
        events = self._first(infos, now)
        del infos
        outcomes: list[Outcome] = []
        last_progress = 0.0
        last_check = time.monotonic()
        s = self.scheduler
        work = self.work
        first = self.restore is not None  # a resumed run takes the requests that waited first
        while True:
            try:
                commands = s.handle(*events)
            except Refused as err:
                self._refused(err, events, outcomes)  # raises
            if first:
                first = False
                self.requests.poll(now, work.batch, force=True)
            if self.requests.commands:  # what requests from other processes changed
                commands = self.requests.commands + commands
                self.requests.commands = []
            if st is not None:
                commands = self._steer(commands, outcomes)
            batch, acts = self._decide(commands, outcomes)
            commands = []  # a new run's first holds a birth per task: not kept past here
            if batch:
                self.writer.commit(batch)  # persist first ...
            self._act(acts)  # ... then act
            work.batch = Batch()
            ended = s.done or (s.stopped and s.settled)
            if ended and not self.backend_outbox and (st is None or not st.stimuli):
                return
            wait = 0 if self.backend_outbox or (st is not None and st.stimuli) else POLL
            outcomes = self.backend_outbox + self.backend.poll(wait)
            self.backend_outbox = []
            now = self.clock()  # one reading for the iteration's outcomes and its Tick
            events = [self._event(o, now) for o in outcomes]
            if work.stimuli:
                events.extend(work.stimuli)
                work.stimuli = []
            events.append(Tick(now))
            events.extend(self._stops(now))
            self.requests.poll(now, work.batch)  # its commands join the next iteration's
            if st is not None:
                st.tick(now)
                events.extend(st.take())
            mono = time.monotonic()
            if mono - last_check >= HOUSEKEEP:
                last_check = mono
                self._housekeep()
            if self.on_progress is not None and mono - last_progress > 0.1:
                last_progress = mono
                self.on_progress(dict(s.counts), len(self.records))
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
        """The core refused a stimulus of this iteration (a backend's report it cannot accept,
        or a request it was not asked one at a time). Commit what the stimuli before it did,
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
        return [StopRequested(now, finish, why)]

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
        self.work.batch.rules.extend(st.rows())
        return commands

    def _extra_status(self) -> dict[str, Any]:
        out = self.steering.summary() if self.steering is not None else {}
        out["deadline"] = self.stop_at  # when nothing new starts (--time-left), for the dashboard
        out["allocation_end"] = _allocation_end()
        return out

    def _any_failed(self) -> bool:
        # Cancelled tasks do not count: a task is cancelled only on purpose (shoal cancel,
        # attach().cancel, a rule or strategy), with what depends on it (see _event).
        c = self.scheduler.counts
        return bool(c[State.FAILED] or c[State.DEP_FAILED])

    # -- outcomes into stimuli ----------------------------------------------------------------
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
        elif o.kind == Failure.CANCELLED and not o.ok and o.started is not None:
            # It ran and was cancelled by someone else (flux cancel, a batch system): not a
            # decision of this run, which `cancelled` stands for, but an attempt lost.
            o.kind = Failure.LOST
            o.error = f"cancelled outside shoal while it ran ({first_line(o.error) or 'cancelled'})"
        if o.ok:
            event: Stimulus = Succeeded(now, o.task, o.attempt)
            if o.kind == "response":
                event = self._respond(o, now)
            if o.ok and o.task in self.work.needed and o.result is not None:
                self.outputs.keep(o.task, o.result)
            return event
        reason = first_line(o.error) or o.kind
        return Failed(now, o.task, o.attempt, reason, Failure.of(o.kind), o.exit_code)

    def _stale(self, o: Outcome, now: float) -> Stimulus:
        """The report of an attempt no longer in flight: one taken back before it started
        (a rerun upstream, a run stopping) or given back, that ran anyway before the stop
        reached it. Its attempt row records what happened; its output is not the task's
        (it may have used an old input) and a Response in it adds nothing. The core ignores
        the stimulus."""
        self.log.info(
            "task %s attempt %s ended (%s) after it was taken back: its outcome is ignored",
            o.task,
            o.attempt,
            "succeeded" if o.ok else o.kind or "failed",
        )
        o.result = None
        if o.ok:
            return Succeeded(now, o.task, o.attempt)
        reason = first_line(o.error) or o.kind
        return Failed(now, o.task, o.attempt, reason, Failure.of(o.kind), o.exit_code)

    def _respond(self, o: Outcome, now: float) -> Stimulus:
        """Turn a task's Response into the work it asks for, or fail the task if it is
        invalid (the error names what is wrong)."""
        assert o.result is not None
        try:
            o.result, event = self.work.respond(o.task, o.attempt, o.result, now)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # its classes' code: fail the task
            o.ok = False
            o.result = None
            o.kind = Failure.ERROR
            o.error = self.work.invalid_response(o.task, err)
            return Failed(now, o.task, o.attempt, o.error, Failure.ERROR)
        return event

    # -- persist, then act ------------------------------------------------------------------
    def _decide(self, commands: list[Command], outcomes: list[Outcome]) -> tuple[Batch, _Acts]:
        batch = self.work.batch
        batch.outcomes = outcomes
        acts = _Acts()
        now = self.clock()
        stored = len(self.plan.records) if self.born is not None else 0
        for c in commands:
            if type(c) is Born:
                if (c.ready and c.ready[0] < stored) or (c.pending and c.pending[0] < stored):
                    continue  # the plan's births: stored with the plan already (add_plan)
                batch.transitions.extend(c.transitions())
            elif isinstance(c, Transition):
                if self.doomed and c.task in self.doomed and c.old is QUEUED:
                    doomed = self.doomed.pop(c.task)
                    if c.new is RUNNING and c.attempt == doomed.attempt:
                        self.backend_outbox.append(doomed)
                batch.transitions.append(c)
                if c.old is RETRYING and c.new is READY:
                    self.work.escalated(c.task, self.scheduler.info(c.task))
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
        jobs: list[Job] = []
        for d in acts.dispatch:
            job = self.jobs.job(d)
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


def _allocation_end() -> float | None:
    """When the batch allocation this driver runs in ends, as its environment says
    (SHOAL_END_TIME, or Slurm's SLURM_JOB_END_TIME); None outside one, or when unreadable."""
    for var in ("SHOAL_END_TIME", "SLURM_JOB_END_TIME"):
        try:
            return float(os.environ[var])
        except (KeyError, ValueError):
            continue
    return None
