"""The task table: each task's record, and the one place where a task's state changes.

Rules of this module:

1. :meth:`TaskTable.move` is the only code that changes the state of a task that exists. A task
   gets its first state once, when it is born (:meth:`TaskTable.insert`, which emits one
   :class:`~shoal.core.commands.Born` for a submission, and :meth:`TaskTable.restore`).
2. ``move`` checks the transition against :data:`~shoal.core.states.TRANSITIONS`, keeps
   ``counts`` and ``open`` equal to what the records say, and emits the
   :class:`~shoal.core.commands.Transition` that the runtime persists before it acts.
3. The table knows the dependency graph (``children``, ``waiting``, ``gates``) and the ready
   queue, nothing of placements: what an attempt in flight holds is :mod:`shoal.core.chains`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from shoal.core.commands import Born, Command, Transition
from shoal.core.ready import ReadyHeap
from shoal.core.resources import Pool
from shoal.core.states import TERMINAL, IllegalTransition, State, check
from shoal.core.stimuli import TaskInfo
from shoal.errors import DefinitionError, ResourceError

# Enum attribute access goes through a Python-level descriptor in 3.11; the hot paths use
# these module constants instead (core/__init__ exports them once for the core's modules).
PENDING, READY, QUEUED, RUNNING = State.PENDING, State.READY, State.QUEUED, State.RUNNING
RETRYING = State.RETRYING
SUCCEEDED, FAILED, CANCELLED = State.SUCCEEDED, State.FAILED, State.CANCELLED
DEP_FAILED, SKIPPED = State.DEP_FAILED, State.SKIPPED

# A failed or cancelled task may be retried (RetryRequested); any finished one rerun.
REOPENABLE = frozenset({FAILED, CANCELLED})


class Rare:
    """The parts of a task's record that few tasks ever set (see :class:`TaskRecord`)."""

    __slots__ = ("first", "gates", "root", "skips")

    def __init__(self) -> None:
        self.first = 0
        self.gates: list[int] | None = None
        self.root: int | None = None
        self.skips = False


class TaskRecord:
    """The table's record of one task. What only an attempt in flight has (its chain, its
    placement, a kill on the way) is in :class:`~shoal.core.chains.Flight` instead. What few
    tasks set (``first``, ``gates``, ``root``, ``skips``) lives in a :class:`Rare` made on
    the first change from its default: a million plain tasks pay one slot for the four."""

    __slots__ = (
        "attempt",
        "children",
        "generation",
        "info",
        "rare",
        "ready_since",
        "state",
        "waiting",
    )

    def __init__(self, info: TaskInfo, state: State = PENDING, attempt: int = 0) -> None:
        self.info = info
        self.state = state
        self.waiting = 0  # tasks it waits for (deps and gates) that have not succeeded
        self.children: list[int] | None = None
        self.attempt = attempt
        self.generation = 0  # ready: which push into the ready queue is the live one
        self.ready_since = 0.0
        self.rare: Rare | None = None

    def _rare(self) -> Rare:
        r = self.rare
        if r is None:
            r = self.rare = Rare()
        return r

    @property
    def first(self) -> int:
        """Attempts a retry budget does not count: those before the last reopen, and those
        given back unstarted."""
        r = self.rare
        return 0 if r is None else r.first

    @first.setter
    def first(self, value: int) -> None:
        if value or self.rare is not None:
            self._rare().first = value

    @property
    def gates(self) -> list[int] | None:
        """Tasks a Response made it wait for, besides its deps."""
        r = self.rare
        return None if r is None else r.gates

    @gates.setter
    def gates(self, value: list[int] | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().gates = value

    @property
    def root(self) -> int | None:
        """dep_failed, cancelled or skipped: the task where it started."""
        r = self.rare
        return None if r is None else r.root

    @root.setter
    def root(self, value: int | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().root = value

    @property
    def skips(self) -> bool:
        """It succeeded with a Response that stopped its children."""
        r = self.rare
        return False if r is None else r.skips

    @skips.setter
    def skips(self, value: bool) -> None:
        if value or self.rare is not None:
            self._rare().skips = value

    def waits_for(self) -> Sequence[int]:
        """Its dependencies and the gates a Response added."""
        return self.info.deps if self.gates is None else (*self.info.deps, *self.gates)

    def started_at(self) -> int:
        """The root of what ended it, or itself."""
        return self.info.id if self.root is None else self.root


class Records(Mapping[int, TaskRecord]):
    """Task id -> record. A run numbers its tasks 0, 1, 2, ... (work added later goes on from
    there), so the records sit in a list at their id: 8 bytes a task where a dict costs ~42.
    An id far past the end (only tests make those) goes into a dict instead of a long gap."""

    __slots__ = ("_far", "_size", "rows")

    GAP = 1024  # an id at most this far past the end pads the list with holes

    def __init__(self) -> None:
        # the records of ids below len(rows), at their index (None: no such task); hot loops
        # read it directly, as a list lookup costs a tenth of a method call
        self.rows: list[TaskRecord | None] = []
        self._far: dict[int, TaskRecord] = {}
        self._size = 0

    def __getitem__(self, tid: int) -> TaskRecord:
        rows = self.rows
        if 0 <= tid < len(rows):
            e = rows[tid]
            if e is not None:
                return e
            raise KeyError(tid)
        return self._far[tid]  # a negative id is never there

    def get(self, tid: int, default: TaskRecord | None = None) -> TaskRecord | None:  # type: ignore[override]
        rows = self.rows
        if type(tid) is int and 0 <= tid < len(rows):
            e = rows[tid]
            return default if e is None else e
        return self._far.get(tid, default)

    def __contains__(self, tid: object) -> bool:
        return isinstance(tid, int) and self.get(tid) is not None

    def __setitem__(self, tid: int, e: TaskRecord) -> None:
        lst = self.rows
        if tid < 0:
            raise KeyError(f"task ids are >= 0, not {tid}")
        if tid < len(lst):
            if lst[tid] is None:
                self._size += 1
            lst[tid] = e
            return
        if tid in self._far:
            self._far[tid] = e
        elif tid - len(lst) <= self.GAP:
            lst.extend([None] * (tid - len(lst)))
            lst.append(e)
            self._size += 1
        else:
            self._far[tid] = e
            self._size += 1

    def __iter__(self) -> Iterator[int]:
        for tid, e in enumerate(self.rows):
            if e is not None:
                yield tid
        yield from self._far

    def items(self) -> Iterator[tuple[int, TaskRecord]]:  # type: ignore[override]
        for tid, e in enumerate(self.rows):
            if e is not None:
                yield tid, e
        yield from self._far.items()

    def values(self) -> Iterator[TaskRecord]:  # type: ignore[override]
        for e in self.rows:
            if e is not None:
                yield e
        yield from self._far.values()

    def __len__(self) -> int:
        return self._size


class TaskTable:
    """Every task of the run, the count per state, and the ready queue."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool  # read only: whether a request can ever fit
        self.records = Records()
        self.counts: dict[State, int] = {s: 0 for s in State}
        self.open = 0  # tasks not in a terminal state
        self.heap = ReadyHeap(self.records, self.records.rows)
        self.now = 0.0
        # the oldest ready task that did not fit while younger ones started, and since when
        # (placement.schedule's starvation guard); soft state: a resume starts its clock anew
        self.passed: tuple[int, float] | None = None

    # -- the one place a state changes ------------------------------------------------------
    def move(
        self, e: TaskRecord, new: State, cause: str, out: list[Command], reason: str = ""
    ) -> None:
        old = e.state
        check(e.info.id, old, new)
        self.counts[old] -= 1
        self.counts[new] += 1
        out.append(Transition(cause, e.info.id, old, new, self.now, reason, e.attempt))
        e.state = new
        if new in TERMINAL:
            self.open -= 1
        elif old in TERMINAL:
            self.open += 1

    def ready(self, e: TaskRecord, cause: str, out: list[Command], reason: str = "") -> None:
        self.move(e, READY, cause, out, reason)
        self._enqueue(e)

    def _enqueue(self, e: TaskRecord) -> None:
        e.generation += 1
        e.ready_since = self.now
        i = e.info
        s = i.shape  # read once, not through TaskInfo's properties
        self.heap.push(i.id, s.request, s.priority, e.generation, s.estimate)

    def wait(self, e: TaskRecord, cause: str, out: list[Command], reason: str) -> None:
        """Back to ready, or to pending if it still waits for a task (a follower)."""
        if e.waiting:
            self.move(e, PENDING, cause, out, reason)
        else:
            self.ready(e, cause, out, reason)

    def unready(self, e: TaskRecord, cause: str, out: list[Command], reason: str) -> None:
        """A ready task goes back to pending (something it waits for runs again)."""
        self.heap.discard(e.info.id)
        self.move(e, PENDING, cause, out, reason)

    def end_downstream(
        self,
        root: TaskRecord,
        start: Iterable[TaskRecord],
        cause: str,
        out: list[Command],
        new: State | None = None,
        reason: str = "",
    ) -> None:
        """End everything downstream of ``root``: dep_failed, or cancelled or skipped if root
        was (or ``new``, when given)."""
        rid = root.started_at()
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
            self.heap.discard(e.info.id)
            e.root = rid
            self.move(e, new, cause, out, reason)
            stack.extend(self.records[c] for c in e.children or ())

    def children_of(self, e: TaskRecord) -> list[TaskRecord]:
        return [self.records[c] for c in e.children or ()]

    # -- questions --------------------------------------------------------------------------
    @staticmethod
    def met(e: TaskRecord, dep: TaskRecord) -> bool:
        """Whether ``dep``, which ``e`` waits for, lets ``e`` run: it succeeded, or it failed
        and ``e`` tolerates that (TaskInfo.tolerate)."""
        return dep.state is SUCCEEDED or (dep.state is FAILED and e.info.tolerate)

    def blocker(self, e: TaskRecord) -> TaskRecord | None:
        """The first task ``e`` waits for that ended and does not let it run."""
        for d in e.waits_for():
            dep = self.records[d]
            if dep.state in TERMINAL and not self.met(e, dep):
                return dep
        return None

    def root_of(self, e: TaskRecord) -> int | None:
        """Where the failure, cancellation or skip that ended ``e`` started."""
        dep = self.blocker(e)
        if dep is not None:
            return dep.started_at()
        if e.state is SKIPPED:  # skipped by the Response of a task that succeeded
            return next((d for d in e.waits_for() if self.records[d].state is SUCCEEDED), None)
        return None

    def unmet(self, e: TaskRecord) -> int:
        """How many of the tasks ``e`` waits for do not let it run yet (see :meth:`met`)."""
        records = self.records
        return sum(1 for d in e.waits_for() if not self.met(e, records[d]))

    def release(self, children: Iterable[int], cause: str, out: list[Command]) -> None:
        """A task they wait for let them run (it succeeded, or failed and they tolerate it):
        each waits for one task fewer, and is ready when it waits for none. (On the path of
        every success: ids, not records, so that nothing is built per call.)"""
        records = self.records
        for c in children:
            child = records[c]
            child.waiting -= 1
            if child.waiting == 0 and child.state is PENDING:
                self.ready(child, cause, out)

    # -- births -------------------------------------------------------------------------------
    def check_submission(self, tasks: Sequence[TaskInfo], gate: Sequence[int] = ()) -> None:
        """Refuse a submission before changing anything: duplicate or unknown ids, requests
        that can never fit, cycles."""
        batch = {t.id for t in tasks}
        if len(batch) != len(tasks):
            raise DefinitionError("a submission names the same task id twice")
        records = self.records
        for t in tasks:
            if t.id in records:
                raise DefinitionError(f"task id {t.id} is already part of this run")
            for d in t.deps:
                if d not in records and d not in batch:
                    raise DefinitionError(f"task {t.id} depends on unknown task {d}")
            why = self.pool.refusal(t.request)
            if why:
                raise ResourceError(f"task {t.id} can never start: {why}")
        for g in gate:
            if g not in records and g not in batch:
                raise DefinitionError(f"dependents cannot wait for unknown task {g}")
        if any(d >= t.id for t in tasks for d in t.deps if d in batch):
            _check_acyclic(tasks, batch)

    def insert(self, tasks: Sequence[TaskInfo], cause: str, out: list[Command]) -> list[int]:
        """Add checked tasks, each born ready or pending; return the dependencies that were
        in flight (queued or running), whose chains must look at their children again."""
        if not tasks:
            return []
        records = self.records
        for t in tasks:
            records[t.id] = TaskRecord(t)
        touched: list[int] = []
        births = Born(cause, self.now, [], [])  # before what follows: filled in below
        out.append(births)
        ready, pending = births.ready, births.pending
        for t in tasks:
            e = records[t.id]
            failed_dep: TaskRecord | None = None
            for d in t.deps:
                dep = records[d]
                if dep.children is None:
                    dep.children = [t.id]
                else:
                    dep.children.append(t.id)
                state = dep.state
                if state is RUNNING or state is QUEUED:
                    touched.append(d)
                if not self.met(e, dep):
                    e.waiting += 1
                    if state in TERMINAL:
                        failed_dep = dep
            # A task is born pending, or ready when it waits for nothing (one transition).
            self.open += 1
            if e.waiting == 0:
                e.state = READY
                self.counts[READY] += 1
                ready.append(t.id)
                self._enqueue(e)
            else:  # born pending (the record's default state)
                self.counts[PENDING] += 1
                pending.append(t.id)
                if failed_dep is not None:
                    self.end_downstream(failed_dep, [e], cause, out)
        return touched

    def restore(
        self,
        tasks: Sequence[TaskInfo],
        states: Sequence[State],
        attempts: Sequence[int],
        gates: Sequence[tuple[int, tuple[int, ...]]],
        cause: str,
        out: list[Command],
    ) -> None:
        """Rebuild a resumed run (checked): finished tasks as they were, the rest ready or
        pending afresh (a task that was queued or running lost its attempt with the driver)."""
        records = self.records
        for t, state, attempts_ in zip(tasks, states, attempts, strict=True):
            records[t.id] = TaskRecord(t, state, attempts_)
        for task, gate in gates:
            records[task].gates = list(gate)
        for t in tasks:
            for d in records[t.id].waits_for():
                dep = records[d]
                if dep.children is None:
                    dep.children = [t.id]
                else:
                    dep.children.append(t.id)
        for t in tasks:  # ids grow with the run, so a task's upstream comes first
            self._restore_one(records[t.id], cause, out)

    def _restore_one(self, e: TaskRecord, cause: str, out: list[Command]) -> None:
        state = e.state
        self.counts[state] += 1
        if state in TERMINAL:
            if state in (DEP_FAILED, CANCELLED, SKIPPED):
                e.root = self.root_of(e)
            return
        self.open += 1
        e.waiting = self.unmet(e)
        bad = self.blocker(e)
        if e.waiting == 0:
            if state is READY:
                self._enqueue(e)
            else:
                lost = state is RUNNING or state is QUEUED
                why = "its attempt was lost with the driver" if lost else "resumed"
                self.ready(e, cause, out, why)
        elif state is not PENDING:
            # Not a transition of the live run (running -> pending is not one): the record
            # it was restored with goes back to waiting, and the store learns it.
            self.counts[state] -= 1
            self.counts[PENDING] += 1
            out.append(Transition(cause, e.info.id, state, PENDING, self.now, "resumed", e.attempt))
            e.state = PENDING
        if bad is not None and e.state is PENDING:
            self.end_downstream(bad, [e], cause, out)


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
