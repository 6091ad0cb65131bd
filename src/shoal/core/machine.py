"""The scheduler: a pure, deterministic state machine.

``Scheduler.handle(*stimuli)`` is its only mutator. It reads no clock, touches no file and starts
no process: the runtime feeds it stimuli stamped with the time and carries out the commands it
returns (persisting every :class:`Transition` before any :class:`Dispatch` or :class:`Kill`).

Each stimulus is checked before it changes anything: one the core cannot accept raises
:class:`~shoal.core.refusals.Refused` with the scheduler exactly as it was, and carries the
commands of the stimuli before it in the same call (they keep their effect). With validation on
(``validate=True`` or ``SHOAL_VALIDATE=1``; the tests set it) every call ends with
:meth:`Scheduler.validate`, the check of every invariant in :mod:`shoal.core.validate`; off, it
costs one attribute test per call. docs/contract.md has the whole contract.

Who owns what (one owner for each piece of state):

* :mod:`shoal.core.tasks`: every task's record, the counts per state, the ready queue; its
  ``TaskTable.move`` is the one place a task's state changes.
* :mod:`shoal.core.chains`: attempts in flight (queued or running), the chains they run in
  (prefetch and followers), their deadlines.
* :mod:`shoal.core.placement`: the scheduling pass (backfill or waves, reservations).
* this module: the dispatch of each stimulus to its handler (``HANDLERS``), the back-off heap of
  retrying tasks, and whether the run stopped. :mod:`shoal.core.reopen` holds the handlers of
  requests that reopen finished tasks.

Which stimulus may cause which transition is data: :data:`shoal.core.states.EVENT_EDGES`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

from shoal.core import reopen
from shoal.core import validate as _invariants
from shoal.core.chains import Chains
from shoal.core.commands import Command, Dispatch, Kill, Transition
from shoal.core.placement import schedule
from shoal.core.policy import Policy
from shoal.core.refusals import (
    Refused,
    RefusedReport,
    RefusedRequest,
    RefusedResource,
    UnknownEvent,
)
from shoal.core.resources import Node, Placement, Pool, Request
from shoal.core.states import TERMINAL, State
from shoal.core.stimuli import (
    CancelRequested,
    Failed,
    RerunRequested,
    Restored,
    RetryRequested,
    Returned,
    Stimulus,
    StopRequested,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
)
from shoal.core.tasks import (
    CANCELLED,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    TaskRecord,
    TaskTable,
)
from shoal.errors import DefinitionError, ResourceError
from shoal.spec.kinds import Failure, KillKind

__all__ = ["Command", "Dispatch", "Kill", "Policy", "Scheduler", "Transition"]

Handler = Callable[["Scheduler", Stimulus, str, list[Command]], None]


class Scheduler:
    """Decides what runs where and when (see core/placement.py for the policy).

    Its state is private: the runtime asks it questions (``state``, ``info``, ``counts`` ...)
    and changes it only through :meth:`handle`."""

    def __init__(
        self, nodes: Sequence[Node], policy: Policy | None = None, *, validate: bool | None = None
    ) -> None:
        # Validation mode (core/validate.py): every handle() ends with a check of every
        # invariant; off unless asked for here or by SHOAL_VALIDATE=1 (the tests set it).
        self.validating = _invariants.enabled() if validate is None else validate
        self.policy = policy or Policy()
        self._pool = Pool(tuple(nodes))
        self._table = TaskTable(self._pool)
        self._chains = Chains(self._table, self._pool, self.policy)
        self._retries: list[tuple[float, int, int]] = []  # (due, task, attempt) backing off
        self.stopped = ""  # why nothing new starts any more (StopRequested); "" while it goes on
        self._seen: dict[int, tuple[int, State]] = {}  # validation: attempt and state last seen

    # -- questions --------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self._table.now

    @property
    def done(self) -> bool:
        """True when every task is in a terminal state."""
        return self._table.open == 0

    @property
    def counts(self) -> Mapping[State, int]:
        """How many tasks are in each state (read only)."""
        return self._table.counts

    @property
    def pool(self) -> Pool:
        """The nodes and what is free on them (read only)."""
        return self._pool

    def __contains__(self, task: int) -> bool:
        return task in self._table.records

    def ids(self) -> list[int]:
        return list(self._table.records)

    def state(self, task: int) -> State:
        return self._table.records[task].state

    def info(self, task: int) -> TaskInfo:
        return self._table.records[task].info

    def in_state(self, *states: State) -> list[int]:
        return [t for t, e in self._table.records.items() if e.state in states]

    def running(self) -> list[int]:
        """The running tasks."""
        return list(self._chains.running)

    def attempt(self, task: int) -> int:
        """The task's latest attempt (0: none yet)."""
        return self._table.records[task].attempt

    def placement(self, task: int) -> Placement | None:
        f = self._chains.flights.get(task)
        return None if f is None else f.placement

    def placements(self) -> list[Placement]:
        return self._chains.placements()

    def in_flight(self, task: int, attempt: int) -> bool:
        """Whether ``attempt`` is the task's attempt queued or running now: a report of any
        other (one taken back or given back before it started) is stale."""
        e = self._table.records.get(task)
        return e is not None and e.attempt == attempt and (e.state is QUEUED or e.state is RUNNING)

    def refusal(self, request: Request) -> str | None:
        return self._pool.refusal(request)

    @property
    def settled(self) -> bool:
        """True when nothing is running or queued (a stopped run can then end)."""
        counts = self._table.counts
        return counts[RUNNING] == 0 and counts[QUEUED] == 0

    @property
    def idle(self) -> bool:
        """Resources are free and no task is ready to use them."""
        return not self._table.heap and any(f.ncores for f in self._pool.free)

    def validate(self) -> None:
        """Check every invariant of the scheduler's state (core/validate.py); raise
        :class:`~shoal.core.validate.Invalid` naming the first that does not hold."""
        _invariants.check(self._table, self._chains, self._retries, self._seen)

    # -- the one mutator ----------------------------------------------------------------------
    def handle(self, *events: Stimulus) -> list[Command]:
        """Apply ``events`` in order, then one scheduling pass; return the commands.

        A stimulus the core cannot accept raises :class:`~shoal.core.refusals.Refused` (see
        there) and changes nothing: each handler checks its stimulus before it mutates
        anything. The stimuli before it keep their effect, and their commands (scheduling pass
        included) ride on the exception. With validation on (``validate=`` or
        ``SHOAL_VALIDATE=1``) every call ends with :meth:`validate`."""
        out: list[Command] = []
        table = self._table
        cause = last = "tick"  # a scheduling pass is credited to the last stimulus not a tick
        for ev in events:
            before = table.now
            if ev.now > before:
                table.now = ev.now
            cause = ev.label()
            handler = HANDLERS.get(type(ev))
            try:
                if handler is None:
                    raise UnknownEvent(f"the scheduler does not handle {type(ev).__name__}", ev)
                handler(self, ev, cause, out)
            except (Refused, DefinitionError) as err:  # checked before anything changed
                table.now = before
                raise self._refused(err, ev, last, out) from err
            if cause != "tick":
                last = cause
        self._schedule(last, out)
        if self.validating:
            self.validate()
        return out

    def _refused(
        self, err: Refused | DefinitionError, ev: Stimulus, last: str, out: list[Command]
    ) -> Refused:
        """The refusal of ``ev``, carrying what the stimuli before it did (their scheduling
        pass too, so that they keep their whole effect)."""
        if isinstance(err, Refused):
            refused = err
        elif isinstance(err, ResourceError):
            refused = RefusedResource(str(err))
        else:
            refused = RefusedRequest(str(err))
        refused.event = ev
        refused.task = getattr(ev, "task", None)
        refused.attempt = getattr(ev, "attempt", None)
        if out:
            self._schedule(last, out)
        refused.commands = out
        if self.validating:
            self.validate()
        return refused

    def _schedule(self, cause: str, out: list[Command]) -> None:
        if not self.stopped:
            schedule(self._table, self._chains, cause, out)

    # -- handlers, one per stimulus (HANDLERS below) ------------------------------------------
    def _on_submitted(self, ev: Submitted, cause: str, out: list[Command]) -> None:
        self._table.check_submission(ev.tasks)
        self._insert(ev.tasks, cause, out)

    def _insert(self, tasks: Sequence[TaskInfo], cause: str, out: list[Command]) -> None:
        touched = self._table.insert(tasks, cause, out)
        if touched:  # in flight: look at their children again for a follower
            self._chains.touched(touched)

    def _on_succeeded(self, ev: Succeeded, cause: str, out: list[Command]) -> None:
        table = self._table
        e = self._current(ev.task, ev.attempt)
        if e is None:
            self._check_not_queued(ev.task, ev.attempt, "succeeded")
            return
        # The dependents a Response is about are those it had before adding work (added tasks
        # that use its output are its children too, but neither gated nor skipped).
        if ev.add or ev.gate:  # refused before anything changes
            table.check_submission(ev.add, ev.gate)
        before = list(e.children or ()) if ev.gate or ev.skip else []
        if ev.response or ev.add or ev.gate or ev.skip:
            self._chains.unfollow(e, cause, out)
        if ev.add:
            self._insert(ev.add, cause, out)
        table.move(e, SUCCEEDED, cause, out)
        e.skips = ev.skip
        self._chains.end_run(e, cause, out)
        if before:
            reopen.redirect(table, e, before, ev, cause, out)
        table.release(e.children or (), cause, out)

    def _on_failed(self, ev: Failed, cause: str, out: list[Command]) -> None:
        e = self._table.records.get(ev.task)
        if e is None or e.attempt != ev.attempt:
            return
        state = e.state
        if state is not QUEUED and state is not RUNNING:
            return  # stale: it ended already
        chains = self._chains
        kill = chains.kill_of(ev.task)
        kind, reason = kill if kill else (ev.kind, ev.reason)
        if state is QUEUED and kind != Failure.STOPPED and kind != Failure.CANCELLED:
            self._check_not_queued(ev.task, ev.attempt, "failed")  # refused: nothing changed
        chains.unfollow(e, cause, out)  # they cannot start behind it now
        if kind == Failure.STOPPED:  # the run stops: it did not fail, it will run again
            self._stopped(e, cause, out, reason)
        elif state is QUEUED:  # cancelled before it started
            chains.unqueue(e)
            self._table.move(e, CANCELLED, cause, out, reason)
            self._table.end_downstream(e, self._table.children_of(e), cause, out)
        else:
            self._ended_badly(e, kind, reason, ev.code, cause, out)

    def _stopped(self, e: TaskRecord, cause: str, out: list[Command], reason: str) -> None:
        """An attempt stopped because the run stops (or a rerun took it back)."""
        if e.state is QUEUED:
            self._chains.unqueue(e)
            e.first += 1  # it never started: no retry budget spent
            self._table.wait(e, cause, out, reason)
        else:
            self._chains.end_run(e, cause, out)
            self._table.ready(e, cause, out, reason)

    def _ended_badly(
        self,
        e: TaskRecord,
        kind: str,
        reason: str,
        code: int | None,
        cause: str,
        out: list[Command],
    ) -> None:
        """A running attempt failed or was cancelled: retry after a back-off, or end it."""
        table = self._table
        policy = e.info.retry
        wait = None
        if policy is not None and kind != Failure.CANCELLED:
            wait = policy.delay_for(e.info.id, e.attempt - e.first, kind, reason, code)
        if wait is not None:  # it tries again after the back-off
            why = f"attempt {e.attempt} failed ({kind}: {reason}); retry in {wait:.3g} s"
            table.move(e, RETRYING, cause, out, why)
            self._chains.end_run(e, cause, out)
            heapq.heappush(self._retries, (table.now + wait, e.info.id, e.attempt))
            return
        table.move(e, CANCELLED if kind == Failure.CANCELLED else FAILED, cause, out, reason)
        self._chains.end_run(e, cause, out)
        children = table.children_of(e)
        if e.state is FAILED:  # those that tolerate a failure run all the same
            table.release([c.info.id for c in children if table.met(c, e)], cause, out)
            children = [c for c in children if not table.met(c, e)]
        table.end_downstream(e, children, cause, out)

    def _on_returned(self, ev: Returned, cause: str, out: list[Command]) -> None:
        """A task came back unstarted: its chain is lost (see Chains.lose)."""
        e = self._table.records.get(ev.task)
        if e is not None and e.attempt == ev.attempt:
            self._chains.lose(e, cause, out)

    def _on_cancel(self, ev: CancelRequested, cause: str, out: list[Command]) -> None:
        table = self._table
        e = table.records.get(ev.task)
        if e is None:
            raise RefusedRequest(f"cannot cancel task {ev.task}: it is not part of this run")
        if e.state in TERMINAL:
            return
        if e.state is RUNNING or e.state is QUEUED:
            self._chains.kill(e, KillKind.CANCELLED, ev.reason, cause, out)
            return
        table.heap.discard(e.info.id)
        table.move(e, CANCELLED, cause, out, ev.reason)
        table.end_downstream(e, table.children_of(e), cause, out)

    def _on_tick(self, ev: Tick, cause: str, out: list[Command]) -> None:
        table = self._table
        due = self._retries
        while due and due[0][0] <= table.now:
            _, task, attempt = heapq.heappop(due)
            back = table.records[task]
            if back.state is not RETRYING or back.attempt != attempt:
                continue  # cancelled while it waited
            policy = back.info.retry
            assert policy is not None
            info = back.info
            request, timeout = policy.escalate(info.request, info.timeout, attempt - back.first)
            if request != info.request and self._pool.refusal(request):
                request = info.request  # more memory than any node has: keep what it had
            if request != info.request or timeout != info.timeout:
                back.info = info.but(request=request, timeout=timeout)
            table.ready(back, cause, out, f"retry after attempt {attempt}")
        self._chains.time_out(cause, out)

    def _on_stop(self, ev: StopRequested, cause: str, out: list[Command]) -> None:
        if not self.stopped:
            self.stopped = ev.reason or "stopped"
        if not ev.drain:
            self._chains.stop_all(ev.reason, cause, out)

    def _on_retry(self, ev: RetryRequested, cause: str, out: list[Command]) -> None:
        reopen.retry(self._table, self._chains, ev, cause, out)

    def _on_rerun(self, ev: RerunRequested, cause: str, out: list[Command]) -> None:
        reopen.rerun(self._table, self._chains, ev, cause, out)

    def _on_restored(self, ev: Restored, cause: str, out: list[Command]) -> None:
        reopen.restore(self._table, ev, cause, out)

    # -- helpers ----------------------------------------------------------------------------
    def _check_not_queued(self, task: int, attempt: int, what: str) -> None:
        """An outcome for a task still queued behind another breaks the backend contract (it
        ran before the task ahead of it ended). Ignoring it would hang the run: say so."""
        e = self._table.records.get(task)
        if e is not None and e.state is QUEUED and e.attempt == attempt:
            ahead = self._chains.ahead(task)
            raise RefusedReport(
                f"the backend reported task {task} attempt {attempt} {what} while it was queued "
                f"behind task {ahead}: a job with 'after' must not start before the task ahead "
                "of it ends (a bug in the backend); the report was refused"
            )

    def _current(self, task: int, attempt: int) -> TaskRecord | None:
        """The record if ``attempt`` is its running attempt; stale reports are ignored."""
        e = self._table.records.get(task)
        if e is None or e.state is not RUNNING or e.attempt != attempt:
            return None
        return e


# Each stimulus type and its handler: the dispatch of Scheduler.handle.
HANDLERS: dict[type[Stimulus], Handler] = {
    Succeeded: Scheduler._on_succeeded,  # type: ignore[dict-item]
    Failed: Scheduler._on_failed,  # type: ignore[dict-item]
    Tick: Scheduler._on_tick,  # type: ignore[dict-item]
    Submitted: Scheduler._on_submitted,  # type: ignore[dict-item]
    CancelRequested: Scheduler._on_cancel,  # type: ignore[dict-item]
    Returned: Scheduler._on_returned,  # type: ignore[dict-item]
    RetryRequested: Scheduler._on_retry,  # type: ignore[dict-item]
    StopRequested: Scheduler._on_stop,  # type: ignore[dict-item]
    RerunRequested: Scheduler._on_rerun,  # type: ignore[dict-item]
    Restored: Scheduler._on_restored,  # type: ignore[dict-item]
}
