"""The scheduler: a pure, deterministic state machine.

``Scheduler.handle(*events)`` is its only mutator. It reads no clock, touches no file and starts
no process: the runtime feeds it events stamped with the time and carries out the commands it
returns (persisting every :class:`Transition` before any :class:`Dispatch` or :class:`Kill`).

Each event is checked before it changes anything: one the core cannot accept raises
:class:`~shoal.core.events.Refused` with the scheduler exactly as it was, and carries the
commands of the events before it in the same call (they keep their effect). With validation on
(``validate=True`` or ``SHOAL_VALIDATE=1``; the tests set it) every call ends with
:meth:`Scheduler.validate`, the check of every invariant in :mod:`shoal.core.validate`; off, it
costs one attribute test per call. docs/contract.md has the whole contract.

Placement policy (``Policy.mode``):

* ``backfill`` (the default): whenever resources free up, the most urgent ready task that fits
  starts: higher ``priority`` first, then the longer ``estimate`` (expected run time; tasks
  without one come after those with one), then submission order (``queue.urgency``).
  ``order="largest"`` puts the largest request first among equal priority (GPUs, then cores), so
  that small tasks fill the gaps at the end; measured on W3 (bench/RESULTS.md) it did worse than
  submission order with the local backend, whose workers serve one task width each and must be
  replaced when the mix of widths changes, so it is not the default. A task that does not fit yet
  does not block smaller ones behind it, with one guard against starvation: once the most urgent
  ready task (by priority, then age) has waited ``reserve_after`` seconds, it gets a reservation.
  The node it is most likely to fit on (the one with the most free cores among those large enough)
  takes no new work until the task starts there; other nodes keep backfilling. On a single node
  this means the node drains until the large task fits. The reservation is derived afresh on every
  pass, so there is no reservation state to persist or to go stale.
* ``waves``: start everything that fits, then start nothing until all of it has finished.
  It exists to compare against; it wastes the cores that wait for the slowest task of a wave.

Prefetch (``Policy.prefetch`` > 0, backfill only): a round trip through the driver costs a
fraction of a millisecond, which is most of the time of a tiny task. So ready tasks of a shape
are queued behind each running task of that shape on its *slot* (its placement), as many as
fit in ``prefetch_window`` seconds of expected work (a moving average of the shape's run time),
at most ``prefetch``. Only tasks with a lane (``TaskInfo.prefetch``: the backend queue that
can hold them, e.g. a worker or a process chain) are queued, and only behind a running task of
the same lane. They are ``queued``: handed to the backend but holding no resources. When the
running task ends, the next one takes over its placement at once (``queued -> running``); when
the slot is lost, the backend returns them (``Returned``) and they are ready again. Longer
tasks are never prefetched, so a slot stuck behind a slow task cannot idle other cores.

Followers (``Policy.follow``, with prefetch): a chain of dependent tiny tasks would otherwise
pay a round trip per link, since a child becomes ready only when the driver has seen its
parent succeed. So a pending task that waits for nothing but the last task of a slot (and may
follow, ``TaskInfo.follow``) is queued behind it at once (``pending -> queued``), within the
same depth, if no ready task of that shape is more urgent. The backend starts it only if that
task succeeds there without a Response, with its output at hand. One step only: a follower
gets no follower of its own until it runs, so that many chains advance side by side rather
than one chain far ahead. (Whole chains queued ahead were measured slower: the tasks in flight
then lie far apart in the store, and each commit writes several times the pages.) When the
task ahead does not succeed (or returns a Response, which may change what its dependents wait
for), the core takes its followers back (``queued -> pending``) and the backend drops them;
they then wait as any pending task does.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from shoal.core import reopen
from shoal.core import validate as _invariants
from shoal.core.events import (
    Cancel,
    Command,
    Dispatch,
    Failed,
    Kill,
    Refused,
    RefusedReport,
    RefusedRequest,
    RefusedResource,
    Rerun,
    Restored,
    Retry,
    Returned,
    Stimulus,
    Stop,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    Transition,
    UnknownEvent,
)
from shoal.core.queue import ReadyQueue, band
from shoal.core.resources import Node, Placement, Pool, Request
from shoal.core.states import TERMINAL, IllegalTransition, State, check
from shoal.errors import DefinitionError, ResourceError


@dataclass(frozen=True, slots=True)
class Policy:
    """How ready tasks are placed: ``backfill`` (default) or ``waves``; see the module doc."""

    mode: str = "backfill"
    reserve_after: float = 60.0
    order: str = "fifo"
    prefetch: int = 0
    prefetch_window: float = 0.02
    follow: bool = False  # queue dependents behind the task they wait for (see the module doc)

    def __post_init__(self) -> None:
        # MatEnsemble calls the two "adaptive" and "non-adaptive": the same policies.
        alias = {"adaptive": "backfill", "non-adaptive": "waves"}.get(self.mode)
        if alias is not None:
            object.__setattr__(self, "mode", alias)
        if self.mode not in ("backfill", "waves"):
            raise DefinitionError(
                f"unknown policy {self.mode!r}: use 'backfill' (the default; also called "
                "'adaptive') or 'waves' ('non-adaptive')"
            )
        if self.reserve_after < 0:
            raise DefinitionError(f"reserve_after must be >= 0 seconds, got {self.reserve_after}")
        if self.prefetch < 0:
            raise DefinitionError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.order not in ("largest", "fifo"):
            raise DefinitionError(
                f"unknown order {self.order!r}: use 'fifo' (the default) or 'largest'"
            )


# Enum attribute access goes through a Python-level descriptor in 3.11; the hot paths below
# use these module constants instead.
PENDING, READY, QUEUED, RUNNING = State.PENDING, State.READY, State.QUEUED, State.RUNNING
RETRYING = State.RETRYING
SUCCEEDED, FAILED, CANCELLED, DEP_FAILED, SKIPPED = (
    State.SUCCEEDED,
    State.FAILED,
    State.CANCELLED,
    State.DEP_FAILED,
    State.SKIPPED,
)


class _Slot:
    """A placement and the tasks using it in turn: ``tasks[0]`` runs, the rest are queued."""

    __slots__ = ("key", "lane", "looked", "placement", "request", "tasks")

    def __init__(
        self, key: int, placement: Placement, request: Request, task: int, lane: str | None
    ) -> None:
        self.key = key
        self.placement = placement
        self.request = request
        self.lane = lane  # the backend queue its tasks run in; None: nothing may queue here
        self.tasks: deque[int] = deque([task])
        self.looked = -1  # the last task whose children were looked at for a follower


class _Entry:
    __slots__ = (
        "attempt",
        "children",
        "first",
        "follows",
        "gates",
        "generation",
        "info",
        "kill",
        "placement",
        "ready_since",
        "root",
        "since",
        "skips",
        "slot",
        "state",
        "waiting",
    )

    def __init__(self, info: TaskInfo) -> None:
        self.info = info
        self.state = State.PENDING
        self.waiting = 0
        self.children: list[int] | None = None
        self.gates: list[int] | None = None  # tasks a Response made it wait for, besides deps
        self.attempt = 0
        # attempts a retry budget does not count: those before the last reopen, and those
        # given back unstarted
        self.first = 0
        self.placement: Placement | None = None
        self.generation = 0
        self.ready_since = 0.0
        self.since = 0.0  # when the current attempt started running
        self.kill: tuple[str, str] | None = None  # (kind, reason) of a kill in flight
        self.slot: _Slot | None = None
        self.root = -1  # dep_failed/cancelled downstream: the task where it started
        self.follows = -1  # queued as a follower: the task ahead of it that it waits for
        self.skips = False  # it succeeded with a Response that stopped its children

    def waits_for(self) -> Sequence[int]:
        """Its dependencies and the gates a Response added."""
        return self.info.deps if self.gates is None else (*self.info.deps, *self.gates)


def _size(r: Request) -> tuple[int, int, int]:
    """Sort key putting the largest request first: GPUs, then cores, then memory."""
    return (-r.gpus * r.ranks, -r.cpus * r.ranks, -r.memory * r.ranks)


def _check_acyclic(tasks: Sequence[TaskInfo], batch: set[int]) -> None:
    """Refuse a submission whose tasks depend on each other in a cycle (Kahn's algorithm)."""
    waiting = {t.id: sum(1 for d in t.deps if d in batch) for t in tasks}
    children: dict[int, list[int]] = {}
    for t in tasks:
        for d in t.deps:
            if d in batch:
                children.setdefault(d, []).append(t.id)
    todo = [i for i, n in waiting.items() if n == 0]
    seen = 0
    while todo:
        i = todo.pop()
        seen += 1
        for c in children.get(i, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                todo.append(c)
    if seen != len(tasks):
        stuck = sorted(i for i, n in waiting.items() if n > 0)[:10]
        raise DefinitionError(f"the submitted tasks depend on each other in a cycle: {stuck}")


class Scheduler:
    """Decides what runs where and when. See the module docstring for the policy."""

    def __init__(
        self, nodes: Sequence[Node], policy: Policy | None = None, *, validate: bool | None = None
    ) -> None:
        # Validation mode (core/validate.py): every handle() ends with a check of every
        # invariant; off unless asked for here or by SHOAL_VALIDATE=1 (the tests set it).
        self.validating = _invariants.enabled() if validate is None else validate
        self.pool = Pool(tuple(nodes))
        self.policy = policy or Policy()
        self.tasks: dict[int, _Entry] = {}
        self.queue = ReadyQueue()
        self.counts: dict[State, int] = {s: 0 for s in State}
        self.running: dict[int, _Entry] = {}
        self.now = 0.0
        self._deadlines: list[tuple[float, int, int]] = []
        self._retries: list[tuple[float, int, int]] = []  # (due, task, attempt) backing off
        self._open = 0
        self._slot_keys = itertools.count()
        self.open_slots: dict[Request, dict[int, _Slot]] = {}  # slots accepting prefetch
        self.runtime: dict[Request, float] = {}  # moving average of run time per shape
        self.stopped = ""  # why nothing new starts any more (Stop); "" while the run goes on
        self._seen: dict[int, tuple[int, State]] = {}  # validation: attempt and state last seen

    # -- public questions -----------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True when every task is in a terminal state."""
        return self._open == 0

    def state(self, task: int) -> State:
        return self.tasks[task].state

    def placement(self, task: int) -> Placement | None:
        return self.tasks[task].placement

    def in_flight(self, task: int, attempt: int) -> bool:
        """Whether ``attempt`` is the task's attempt queued or running now: a report of any
        other (one taken back or given back before it started) is stale."""
        e = self.tasks.get(task)
        return e is not None and e.attempt == attempt and (e.state is QUEUED or e.state is RUNNING)

    def placements(self) -> list[Placement]:
        return [e.placement for e in self.running.values() if e.placement is not None]

    def refusal(self, request: Request) -> str | None:
        return self.pool.refusal(request)

    @property
    def settled(self) -> bool:
        """True when nothing is running or queued (a stopped run can then end)."""
        return self.counts[RUNNING] == 0 and self.counts[QUEUED] == 0

    def validate(self) -> None:
        """Check every invariant of the scheduler's state (core/validate.py); raise
        :class:`~shoal.core.validate.Invalid` naming the first that does not hold."""
        _invariants.check(self)

    @property
    def idle(self) -> bool:
        """Resources are free and no task is ready to use them."""
        return not self.queue and any(f.ncores for f in self.pool.free)

    # -- the one mutator ------------------------------------------------------------------
    def handle(self, *events: Stimulus) -> list[Command]:
        """Apply ``events`` in order, then one scheduling pass; return the commands.

        An event the core cannot accept raises :class:`~shoal.core.events.Refused` (see there)
        and changes nothing: each handler checks its event before it mutates anything. The
        events before it keep their effect, and their commands (scheduling pass included) ride
        on the exception. With validation on (``validate=`` or ``SHOAL_VALIDATE=1``) every
        call ends with :meth:`validate`."""
        out: list[Command] = []
        cause = last = "tick"  # a scheduling pass is credited to the last event that is not a tick
        for ev in events:
            before = self.now
            if ev.now > self.now:
                self.now = ev.now
            cause = ev.label()
            try:
                if isinstance(ev, Succeeded):
                    self._on_succeeded(ev, cause, out)
                elif isinstance(ev, Failed):
                    self._on_failed(ev, cause, out)
                elif isinstance(ev, Tick):
                    self._on_tick(cause, out)
                elif isinstance(ev, Submitted):
                    self._on_submitted(ev, cause, out)
                elif isinstance(ev, Cancel):
                    self._on_cancel(ev, cause, out)
                elif isinstance(ev, Returned):
                    self._on_returned(ev, cause, out)
                elif isinstance(ev, Retry):
                    reopen.retry(self, ev, cause, out)
                elif isinstance(ev, Stop):
                    reopen.stop(self, ev, cause, out)
                elif isinstance(ev, Rerun):
                    reopen.rerun(self, ev, cause, out)
                elif isinstance(ev, Restored):
                    reopen.restore(self, ev, cause, out)
                else:
                    raise UnknownEvent(f"the scheduler does not handle {type(ev).__name__}")
            except (Refused, DefinitionError) as err:  # checked before anything changed
                self.now = before
                raise self._refused(err, ev, last, out) from err
            if cause != "tick":
                last = cause
        self._schedule(last, out)
        if self.validating:
            _invariants.check(self)
        return out

    def _refused(
        self, err: Refused | DefinitionError, ev: Stimulus, last: str, out: list[Command]
    ) -> Refused:
        """The refusal of ``ev``, carrying what the events before it did (their scheduling
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
            _invariants.check(self)
        return refused

    # -- handlers ---------------------------------------------------------------------------
    def _move(
        self, e: _Entry, new: State, cause: str, out: list[Command], reason: str = ""
    ) -> None:
        check(e.info.id, e.state, new)
        self.counts[e.state] -= 1
        self.counts[new] += 1
        out.append(Transition(cause, e.info.id, e.state, new, self.now, reason, e.attempt))
        e.state = new
        if new in TERMINAL:
            self._open -= 1

    def _on_submitted(self, ev: Submitted, cause: str, out: list[Command]) -> None:
        self._check_submission(ev.tasks)
        self._insert(ev.tasks, cause, out)

    def _check_submission(self, tasks: Sequence[TaskInfo], gate: Sequence[int] = ()) -> None:
        """Refuse a submission before changing anything: duplicate or unknown ids, requests
        that can never fit, cycles."""
        batch = {t.id for t in tasks}
        if len(batch) != len(tasks):
            raise DefinitionError("a submission names the same task id twice")
        for t in tasks:
            if t.id in self.tasks:
                raise DefinitionError(f"task id {t.id} is already part of this run")
            for d in t.deps:
                if d not in self.tasks and d not in batch:
                    raise DefinitionError(f"task {t.id} depends on unknown task {d}")
            why = self.pool.refusal(t.request)
            if why:
                raise ResourceError(f"task {t.id} can never start: {why}")
        for g in gate:
            if g not in self.tasks and g not in batch:
                raise DefinitionError(f"dependents cannot wait for unknown task {g}")
        if any(d >= t.id for t in tasks for d in t.deps if d in batch):
            _check_acyclic(tasks, batch)

    def _insert(self, tasks: Sequence[TaskInfo], cause: str, out: list[Command]) -> None:
        for t in tasks:
            self.tasks[t.id] = _Entry(t)
        for t in tasks:
            e = self.tasks[t.id]
            failed_dep: _Entry | None = None
            for d in t.deps:
                dep = self.tasks[d]
                if dep.children is None:
                    dep.children = [t.id]
                else:
                    dep.children.append(t.id)
                if dep.slot is not None:  # in flight: look at its children again for a follower
                    dep.slot.looked = -1
                if dep.state is not SUCCEEDED:
                    e.waiting += 1
                    if dep.state in TERMINAL:
                        failed_dep = dep
            # A task is born pending, or ready when it waits for nothing (one transition).
            born = READY if e.waiting == 0 else PENDING
            e.state = born
            self.counts[born] += 1
            self._open += 1
            out.append(Transition(cause, t.id, None, born, self.now))
            if born is READY:
                e.generation += 1
                e.ready_since = self.now
                self.queue.push(t.id, t.request, t.priority, e.generation, t.estimate)
            elif failed_dep is not None:
                self._end_downstream(failed_dep, [e], cause, out)

    def _on_succeeded(self, ev: Succeeded, cause: str, out: list[Command]) -> None:
        e = self._current(ev.task, ev.attempt)
        if e is None:
            self._check_not_queued(ev.task, ev.attempt, "succeeded")
            return
        # The dependents a Response is about are those it had before adding work (added tasks
        # that use its output are its children too, but neither gated nor skipped).
        if ev.add or ev.gate:  # refused before anything changes
            self._check_submission(ev.add, ev.gate)
        before = list(e.children or ()) if ev.gate or ev.skip else []
        if ev.response or ev.add or ev.gate or ev.skip:
            self._unfollow(e, cause, out)
        if ev.add:
            self._insert(ev.add, cause, out)
        self._move(e, SUCCEEDED, cause, out)
        e.skips = ev.skip
        self._end_run(e, cause, out)
        if before:
            reopen.redirect(self, e, before, ev, cause, out)
        for c in e.children or ():
            child = self.tasks[c]
            child.waiting -= 1
            if child.waiting == 0 and child.state is PENDING:
                self._ready(child, cause, out)

    def _on_failed(self, ev: Failed, cause: str, out: list[Command]) -> None:
        e = self.tasks.get(ev.task)
        if e is None or e.attempt != ev.attempt:
            return
        kind, reason = e.kill if e.kill else (ev.kind, ev.reason)
        if e.state is QUEUED and kind != "stopped" and kind != "cancelled":
            self._check_not_queued(ev.task, ev.attempt, "failed")  # refused: nothing changed
        if e.state is QUEUED or e.state is RUNNING:
            self._unfollow(e, cause, out)  # they cannot start behind it now
        if kind == "stopped":  # the run stops: it did not fail, it will run again
            if e.state is QUEUED:
                self._unqueue(e)
                e.first += 1  # it never started: no retry budget spent
                self._wait(e, cause, out, reason)
            elif e.state is RUNNING:
                self._end_run(e, cause, out)
                self._ready(e, cause, out, reason)
            return
        if e.state is QUEUED and kind == "cancelled":  # dropped before it started
            self._unqueue(e)
            self._move(e, CANCELLED, cause, out, reason)
        elif e.state is RUNNING:
            policy = e.info.retry
            wait = None
            if policy is not None and kind != "cancelled":
                tries = e.attempt - e.first
                wait = policy.delay_for(e.info.id, tries, kind, reason, ev.code)
            if wait is not None:  # it tries again after the back-off
                why = f"attempt {e.attempt} failed ({kind}: {reason}); retry in {wait:.3g} s"
                self._move(e, RETRYING, cause, out, why)
                self._end_run(e, cause, out)
                heapq.heappush(self._retries, (self.now + wait, e.info.id, e.attempt))
                return
            new = CANCELLED if kind == "cancelled" else FAILED
            self._move(e, new, cause, out, reason)
            self._end_run(e, cause, out)
        else:
            return
        self._end_downstream(e, [self.tasks[c] for c in e.children or ()], cause, out)

    def _on_returned(self, ev: Returned, cause: str, out: list[Command]) -> None:
        """A task came back unstarted: its slot is lost. Free the slot's placement and make
        every task on it ready again (their own Returned reports, if any, are then stale)."""
        e = self.tasks.get(ev.task)
        if e is None or e.attempt != ev.attempt or e.slot is None:
            return
        if e.state is not QUEUED and e.state is not RUNNING:
            return
        slot = e.slot
        self.open_slots.get(slot.request, {}).pop(slot.key, None)
        head = self.tasks[slot.tasks[0]]
        if head.state is RUNNING and head is not e:
            # The head still runs (or its outcome is on the way): only the queued ones go.
            for t in list(slot.tasks)[1:]:
                self._give_back(self.tasks[t], cause, out)
            return
        for t in list(slot.tasks):
            self._give_back(self.tasks[t], cause, out)
        self.pool.release(slot.placement)

    def _give_back(self, e: _Entry, cause: str, out: list[Command]) -> None:
        """Take back an attempt that never started: it costs no attempt of a retry budget."""
        slot = e.slot
        if slot is None:  # a follower already taken back, with the task it followed
            return
        e.first += 1  # attempt numbers stay unique: a late report of it is then stale
        if e.kill is not None and e.kill[0] == "cancelled":
            self._unfollow(e, cause, out)  # before what follows it is cancelled with it
        slot.tasks.remove(e.info.id)
        e.slot = None
        e.follows = -1
        if e.state is RUNNING:
            e.placement = None
            del self.running[e.info.id]
        if e.kill is not None and e.kill[0] == "cancelled":
            self._move(e, CANCELLED, cause, out, e.kill[1])
            self._end_downstream(e, [self.tasks[c] for c in e.children or ()], cause, out)
        else:
            self._wait(e, cause, out, "returned unstarted by the backend")

    def _on_cancel(self, ev: Cancel, cause: str, out: list[Command]) -> None:
        e = self.tasks.get(ev.task)
        if e is None:
            raise DefinitionError(f"cannot cancel task {ev.task}: it is not part of this run")
        if e.state in TERMINAL:
            return
        if e.state is RUNNING or e.state is QUEUED:
            if e.kill is None:
                e.kill = ("cancelled", ev.reason)
                out.append(Kill(cause, e.info.id, e.attempt, ev.reason))
            return
        self.queue.discard(e.info.id)
        self._move(e, CANCELLED, cause, out, ev.reason)
        self._end_downstream(e, [self.tasks[c] for c in e.children or ()], cause, out)

    def _on_tick(self, cause: str, out: list[Command]) -> None:
        due = self._retries
        while due and due[0][0] <= self.now:
            _, task, attempt = heapq.heappop(due)
            back = self.tasks[task]
            if back.state is not RETRYING or back.attempt != attempt:
                continue  # cancelled while it waited
            policy = back.info.retry
            assert policy is not None
            info = back.info
            request, timeout = policy.escalate(info.request, info.timeout, attempt - back.first)
            if request != info.request and self.pool.refusal(request):
                request = info.request  # more memory than any node has: keep what it had
            if request != info.request or timeout != info.timeout:
                back.info = replace(info, request=request, timeout=timeout)
            self._ready(back, cause, out, f"retry after attempt {attempt}")
        dl = self._deadlines
        while dl and dl[0][0] <= self.now:
            _, task, attempt = heapq.heappop(dl)
            e = self._current(task, attempt)
            if e is None or e.kill is not None:
                continue
            reason = f"timed out after {e.info.timeout:g} s"
            e.kill = ("timeout", reason)
            out.append(Kill(cause, task, attempt, reason, "timeout"))

    # -- helpers ----------------------------------------------------------------------------
    def _check_not_queued(self, task: int, attempt: int, what: str) -> None:
        """An outcome for a task still queued behind another breaks the backend contract (it
        ran before the task ahead of it ended). Ignoring it would hang the run: say so."""
        e = self.tasks.get(task)
        if e is not None and e.state is QUEUED and e.attempt == attempt:
            ahead = e.slot.tasks[0] if e.slot is not None else "?"
            raise RefusedReport(
                f"the backend reported task {task} attempt {attempt} {what} while it was queued "
                f"behind task {ahead}: a job with 'after' must not start before the task ahead "
                "of it ends (a bug in the backend); the report was refused"
            )

    def _current(self, task: int, attempt: int) -> _Entry | None:
        """The entry if ``attempt`` is its running attempt; stale reports are ignored."""
        e = self.tasks.get(task)
        if e is None or e.state is not RUNNING or e.attempt != attempt:
            return None
        return e

    def _end_run(self, e: _Entry, cause: str, out: list[Command]) -> None:
        """The running attempt of ``e`` ended: hand its slot to the next queued task or free it."""
        slot = e.slot
        assert slot is not None and slot.tasks[0] == e.info.id
        took = self.now - e.since
        old = self.runtime.get(slot.request)
        self.runtime[slot.request] = took if old is None else 0.8 * old + 0.2 * took
        slot.tasks.popleft()
        e.slot = None
        e.placement = None
        del self.running[e.info.id]
        if not slot.tasks:
            self.pool.release(slot.placement)
            self.open_slots.get(slot.request, {}).pop(slot.key, None)
            return
        nxt = self.tasks[slot.tasks[0]]
        nxt.follows = -1  # it starts: what it followed succeeded
        self._run(nxt, slot.placement, cause, out)
        if nxt.kill is not None:  # cancelled while it was queued: stop it now it started
            out.append(Kill(cause, nxt.info.id, nxt.attempt, nxt.kill[1], nxt.kill[0]))
        if slot.lane and len(slot.tasks) <= self.policy.prefetch:
            self.open_slots.setdefault(slot.request, {})[slot.key] = slot

    def _unqueue(self, e: _Entry) -> None:
        slot = e.slot
        assert slot is not None
        slot.tasks.remove(e.info.id)
        e.slot = None
        e.follows = -1
        if self.policy.prefetch and slot.tasks and slot.lane:
            self.open_slots.setdefault(slot.request, {})[slot.key] = slot

    def _take_back(self, e: _Entry, cause: str, out: list[Command], reason: str) -> None:
        """Take back a queued task before it starts (it would run on an output that is about
        to change): pending again, costing no attempt; the backend is told to drop it, and a
        late report of that attempt is stale (the next dispatch is a new attempt)."""
        assert e.state is QUEUED and e.kill is None
        self._unfollow(e, cause, out)
        self._unqueue(e)
        e.first += 1
        out.append(Kill(cause, e.info.id, e.attempt, reason, "stopped"))
        self._move(e, PENDING, cause, out, reason)

    def _unfollow(self, e: _Entry, cause: str, out: list[Command]) -> None:
        """Take back the followers queued behind ``e`` (and theirs): ``e`` will not succeed
        there, or returned a Response; they wait for it as pending tasks again."""
        slot = e.slot
        if slot is None or slot.tasks[-1] == e.info.id:
            return
        tasks = list(slot.tasks)
        lead = e.info.id
        back = []
        for t in tasks[tasks.index(lead) + 1 :]:
            f = self.tasks[t]
            if f.follows != lead:
                break  # followers of ``e`` come right behind it
            back.append(f)
            lead = t
        for f in back:  # (what ends ``e`` decides what becomes of the slot)
            slot.tasks.remove(f.info.id)
            f.slot = None
            f.follows = -1
            f.first += 1  # it never started: no retry budget spent
            self._move(f, PENDING, cause, out, f"task {e.info.id} ahead of it did not succeed")

    def _wait(self, e: _Entry, cause: str, out: list[Command], reason: str) -> None:
        """Back to ready, or to pending if it still waits for a task (a follower)."""
        if e.waiting:
            self._move(e, PENDING, cause, out, reason)
        else:
            self._ready(e, cause, out, reason)

    def _ready(self, e: _Entry, cause: str, out: list[Command], reason: str = "") -> None:
        self._move(e, READY, cause, out, reason)
        e.generation += 1
        e.ready_since = self.now
        self.queue.push(e.info.id, e.info.request, e.info.priority, e.generation, e.info.estimate)

    def _end_downstream(
        self,
        root: _Entry,
        start: Iterable[_Entry],
        cause: str,
        out: list[Command],
        new: State | None = None,
        reason: str = "",
    ) -> None:
        """End everything downstream of ``root``: dep_failed, or cancelled or skipped if root
        was (or ``new``, when given)."""
        rid = root.root if root.root >= 0 else root.info.id
        if new is not None:
            pass
        elif root.state is CANCELLED:
            new, reason = CANCELLED, f"upstream task {rid} was cancelled"
        elif root.state is SKIPPED:
            new, reason = SKIPPED, f"upstream task {rid} stopped its children (Response)"
        else:
            new, reason = DEP_FAILED, f"upstream task {rid} failed"
        stack = list(start)
        while stack:
            e = stack.pop()
            if e.state in TERMINAL:
                continue
            if e.state is RUNNING or e.state is QUEUED:  # it waited for root
                raise IllegalTransition(f"task {e.info.id} runs although {rid} did not succeed")
            self.queue.discard(e.info.id)
            e.root = rid
            self._move(e, new, cause, out, reason)
            stack.extend(self.tasks[c] for c in e.children or ())

    def _run(self, e: _Entry, placement: Placement, cause: str, out: list[Command]) -> None:
        e.placement = placement
        e.since = self.now
        self.running[e.info.id] = e
        self._move(e, RUNNING, cause, out)
        if e.info.timeout is not None:
            heapq.heappush(self._deadlines, (self.now + e.info.timeout, e.info.id, e.attempt))

    def _start(self, task: int, placement: Placement, cause: str, out: list[Command]) -> None:
        e = self.tasks[task]
        e.attempt += 1
        e.kill = None
        slot = e.slot = _Slot(
            next(self._slot_keys), placement, e.info.request, task, e.info.prefetch
        )
        self._run(e, placement, cause, out)
        out.append(Dispatch(cause, task, e.attempt, placement))
        if self.policy.prefetch and e.info.prefetch:
            self.open_slots.setdefault(slot.request, {})[slot.key] = slot

    def _prefetch(self, avoid: frozenset[int], cause: str, out: list[Command]) -> None:
        """Queue ready tasks of short-running shapes behind running tasks of the same shape,
        and followers (see the module doc): the chain of the slot's last task first, so that
        a chain of dependent tasks runs on, then the most urgent ready task, and so on."""
        follow = self.policy.follow
        for request, slots in self.open_slots.items():
            if not slots or (not follow and request not in self.queue.heaps):
                continue
            took = self.runtime.get(request)
            if took is None:  # nothing of this shape finished yet: no basis to prefetch
                continue
            depth = min(self.policy.prefetch, int(self.policy.prefetch_window / max(took, 1e-6)))
            if depth < 1:
                continue
            for key, slot in list(slots.items()):
                if avoid and any(s.node in avoid for s in slot.placement.slots):
                    continue
                while len(slot.tasks) <= depth:
                    if follow and self._follow(slot, cause, out):
                        continue
                    if request not in self.queue.heaps:
                        break
                    head = self.queue.peek(request)
                    if head is None or self.tasks[head].info.prefetch != slot.lane:
                        break  # the most urgent task of this shape cannot queue here
                    task = self.queue.pop(request)
                    e = self.tasks[task]
                    e.attempt += 1
                    e.kill = None
                    e.slot = slot
                    after = slot.tasks[-1]
                    slot.tasks.append(task)
                    self._move(e, QUEUED, cause, out)
                    out.append(Dispatch(cause, task, e.attempt, slot.placement, after))
                if len(slot.tasks) > depth:
                    del slots[key]

    def _follow(self, slot: _Slot, cause: str, out: list[Command]) -> bool:
        """Queue behind the slot's last task a child of it that waits for nothing else (True
        if one was). Each task's children are looked at once: a task with thousands of them
        costs that once, not at every pass."""
        tail = self.tasks[slot.tasks[-1]]
        if not tail.children or slot.looked == tail.info.id or tail.follows >= 0:
            return False
        slot.looked = tail.info.id
        head = self.queue.peek(slot.request)
        floor = self.tasks[head].info.priority if head is not None else None
        for c in tail.children:
            f = self.tasks[c]
            if (
                f.state is PENDING
                and f.waiting == 1  # only ``tail``, which has not succeeded yet
                and f.info.follow
                and f.info.request == slot.request
                and f.info.prefetch == slot.lane
                and (floor is None or f.info.priority >= floor)
            ):
                f.attempt += 1
                f.kill = None
                f.slot = slot
                f.follows = tail.info.id
                slot.tasks.append(c)
                self._move(f, QUEUED, cause, out, f"follows task {tail.info.id}")
                out.append(Dispatch(cause, c, f.attempt, slot.placement, tail.info.id, True))
                return True
        return False

    def _schedule(self, cause: str, out: list[Command]) -> None:
        if self.stopped or not (self.queue or (self.policy.follow and self.open_slots)):
            return
        waves = self.policy.mode == "waves"
        if waves and self.running:
            return
        blocked: set[Request] = set()
        avoid: frozenset[int] = frozenset()
        largest = self.policy.order == "largest"
        while self.queue:
            heads = self.queue.heads()  # most urgent first (queue.urgency), then submission
            first = None
            if not avoid and not waves:
                # Starvation guard: among the heads of the top priority, the one that has waited
                # longest (not the longest estimate: a stream of long small tasks must not
                # starve a wide one), once it has waited reserve_after seconds, goes first if
                # it fits, and gets a reservation if it does not.
                top = band(heads[0][0][0])
                oldest = min(
                    (h for h in heads if band(h[0][0]) == top),
                    key=lambda h: self.tasks[h[0][1]].ready_since,
                )
                (_, task, _), request = oldest
                waited = self.now - self.tasks[task].ready_since
                if waited >= self.policy.reserve_after:
                    if self.pool.fits(request):
                        first = oldest
                    else:
                        blocked.add(request)
                        avoid = self._reserve(request)
            if largest:  # among equal priority, the biggest first: small ones fill the gaps
                heads.sort(key=lambda h: (band(h[0][0]), _size(h[1]), h[0][0], h[0][1]))
            if first is not None and heads[0] is not first:
                heads.remove(first)
                heads.insert(0, first)
            started = False
            for _, request in heads:
                if request in blocked:
                    continue
                placement = self.pool.allocate(request, avoid)
                if placement is not None:
                    self._start(self.queue.pop(request), placement, cause, out)
                    started = True
                    break
                blocked.add(request)
            if not started:
                break
        if self.policy.prefetch and not waves:
            self._prefetch(avoid, cause, out)

    def _reserve(self, request: Request) -> frozenset[int]:
        """Nodes to keep free for a starving task of shape ``request``."""
        nodes = self.pool.nodes
        big = [
            i
            for i, n in enumerate(nodes)
            if len(n.cores) >= request.cpus * request.ranks
            and len(n.gpus) >= request.gpus * request.ranks
            and (not n.memory or n.memory >= request.memory * request.ranks)
        ]
        if not big:  # it spans nodes: hold everything until it fits
            return frozenset(range(len(nodes)))
        best = max(big, key=lambda i: (self.pool.free[i].ncores, self.pool.free[i].ngpus, -i))
        return frozenset({best})
