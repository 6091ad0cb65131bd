"""Validation mode: every invariant of the scheduler's state, checked after every ``handle()``.

Off by default, so it costs nothing in a real run (one attribute test per ``handle()`` call).
On with ``Scheduler(..., validate=True)`` or ``SHOAL_VALIDATE=1`` in the environment; the test
suite sets the variable (tests/conftest.py), so every scheduler in every test, the drivers of
real runs in subprocesses included, checks itself after each step. A check costs time linear in
the tasks and dependencies of the run.

A broken invariant raises :class:`Invalid` (a bug in shoal, never a user error) naming the
invariant and the task. What is checked:

* resources: per node, the placements of the slots and the free cores, GPUs and memory add up
  to the node's capacity, without overlap (``Pool.check``);
* counts: ``counts[state]`` is the number of tasks in that state; ``_open`` the number of
  tasks not in a terminal state;
* running: the ``running`` dict holds exactly the running tasks; each has a placement and a
  slot whose head it is, and that slot's placement; every other task has neither placement
  nor (unless queued) slot;
* queued: each queued task sits in a slot behind a running head, of its shape and lane, with
  the slot's placement held by that head; every slot's tasks point back at it;
* open slots (prefetch) are live slots with a lane, filed under their own shape and key;
* ready: the ready queue holds exactly the ready tasks, each with its current generation;
* dependencies: ``waiting`` is the number of tasks a non-terminal task waits for that have not
  succeeded; a pending task waits for some, a ready, running or retrying task for none, a
  queued one for none or (a follower) exactly the task right ahead of it; no task that is not
  finished waits for a task that ended without success; every dependency lists its dependent
  among its children;
* followers: ``follows`` is set only on queued tasks, names a task they wait for, and that task
  is right ahead of them in the slot; a follower needs ``Policy.follow``;
* retries: every retrying task has its due entry in the back-off heap;
* attempts: never negative, at least ``first``, at least 1 in flight, and never lower than at
  the last check (a task given back unstarted keeps its attempt number, and raises ``first``
  instead: it costs no retry).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from shoal.core.states import TERMINAL, State

if TYPE_CHECKING:
    from shoal.core.machine import Scheduler, _Slot

PENDING, READY, QUEUED, RUNNING = State.PENDING, State.READY, State.QUEUED, State.RUNNING
RETRYING, SUCCEEDED = State.RETRYING, State.SUCCEEDED

ENV = "SHOAL_VALIDATE"


class Invalid(AssertionError):
    """An invariant of the scheduler's state does not hold (a bug in shoal)."""


def enabled() -> bool:
    """Whether ``SHOAL_VALIDATE`` asks for validation (1, true, yes, on)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _fail(what: str) -> None:
    raise Invalid(f"scheduler invariant broken: {what}")


def check(s: Scheduler) -> None:
    """Raise :class:`Invalid` if any invariant (see the module doc) does not hold."""
    tasks = s.tasks
    counts = {st: 0 for st in State}
    slots: dict[int, _Slot] = {}
    edges = {(p, c) for p, e in tasks.items() for c in e.children or ()}
    for tid, e in tasks.items():
        if e.info.id != tid:
            _fail(f"task {tid} is filed under another id ({e.info.id})")
        state = e.state
        counts[state] += 1
        if e.attempt < 0 or e.first < 0 or e.first > e.attempt:
            _fail(f"task {tid}: attempt {e.attempt}, first {e.first}")
        if state is RUNNING:
            slot = e.slot
            if e.placement is None or slot is None:
                _fail(f"running task {tid} has no placement or no slot")
                return
            if slot.tasks[0] != tid:
                _fail(f"running task {tid} is not the head of its slot {list(slot.tasks)}")
            if e.placement != slot.placement:
                _fail(f"running task {tid} holds another placement than its slot's")
            if s.running.get(tid) is not e:
                _fail(f"running task {tid} is missing from Scheduler.running")
            if e.attempt < 1:
                _fail(f"running task {tid} has attempt {e.attempt}")
            if e.since > s.now:
                _fail(f"running task {tid} started after now")
            slots[slot.key] = slot
        elif state is QUEUED:
            slot = e.slot
            if slot is None:
                _fail(f"queued task {tid} is in no slot")
                return
            if e.placement is not None:
                _fail(f"queued task {tid} holds a placement")
            if tid not in slot.tasks or slot.tasks[0] == tid:
                _fail(f"queued task {tid} is not behind the head of its slot {list(slot.tasks)}")
            if tasks[slot.tasks[0]].state is not RUNNING:
                _fail(f"queued task {tid} waits in a slot whose head is not running")
            if e.info.request != slot.request or e.info.prefetch != slot.lane or not slot.lane:
                _fail(f"queued task {tid} is not of its slot's shape and lane")
            if e.attempt < 1:
                _fail(f"queued task {tid} has attempt {e.attempt}")
        else:
            if e.slot is not None or e.placement is not None:
                _fail(f"task {tid} is {state.value} but holds a slot or a placement")
            if tid in s.running:
                _fail(f"task {tid} is {state.value} but listed in Scheduler.running")
        if e.follows >= 0:
            _check_follower(s, tid)
        elif state is QUEUED and e.waiting:
            _fail(f"queued task {tid} waits for {e.waiting} task(s) but follows none")
        if state not in TERMINAL:
            _check_waits(s, tid, edges)
    for st, n in counts.items():
        if s.counts[st] != n:
            _fail(f"counts[{st.value}] is {s.counts[st]} but {n} tasks are {st.value}")
    open_ = sum(n for st, n in counts.items() if st not in TERMINAL)
    if s._open != open_:
        _fail(f"_open is {s._open} but {open_} tasks are not finished")
    if len(s.running) != counts[RUNNING]:
        _fail(f"Scheduler.running has {len(s.running)} tasks, {counts[RUNNING]} are running")
    _check_slots(s, slots)
    _check_ready(s, counts[READY])
    _check_retries(s)
    _check_attempts(s)


def _check_follower(s: Scheduler, tid: int) -> None:
    e = s.tasks[tid]
    if e.state is not QUEUED or e.slot is None:
        _fail(f"task {tid} follows task {e.follows} but is {e.state.value}")
        return
    if not s.policy.follow or not e.info.follow:
        _fail(f"task {tid} follows task {e.follows} though following is off")
    waits = [d for d in e.waits_for() if s.tasks[d].state is not SUCCEEDED]
    if waits != [e.follows]:
        _fail(f"follower {tid} of task {e.follows} waits for {waits}")
    order = list(e.slot.tasks)
    i = order.index(tid)
    if order[i - 1] != e.follows:
        _fail(f"follower {tid} is not right behind task {e.follows} in its slot {order}")
    if e.waiting != 1:
        _fail(f"follower {tid} has waiting {e.waiting}, not 1")


def _check_waits(s: Scheduler, tid: int, edges: set[tuple[int, int]]) -> None:
    e = s.tasks[tid]
    waits = 0
    for d in e.waits_for():
        dep = s.tasks.get(d)
        if dep is None:
            _fail(f"task {tid} waits for unknown task {d}")
            return
        if (d, tid) not in edges:
            _fail(f"task {tid} waits for task {d}, which does not list it as a child")
        if dep.state is not SUCCEEDED:
            waits += 1
            if dep.state in TERMINAL:
                _fail(
                    f"task {tid} is {e.state.value} though task {d} it waits for ended "
                    f"{dep.state.value}"
                )
    if e.waiting != waits:
        _fail(f"task {tid} has waiting {e.waiting}, but waits for {waits} task(s)")
    state = e.state
    if state is PENDING and not waits:
        _fail(f"task {tid} is pending but waits for nothing")
    if (state is READY or state is RUNNING or state is RETRYING) and waits:
        _fail(f"task {tid} is {state.value} but waits for {waits} task(s)")


def _check_slots(s: Scheduler, slots: dict[int, _Slot]) -> None:
    for slot in slots.values():
        for i, t in enumerate(slot.tasks):
            e = s.tasks[t]
            if e.slot is not slot:
                _fail(f"task {t} is listed in slot {slot.key} but points elsewhere")
            want = RUNNING if i == 0 else QUEUED
            if e.state is not want:
                _fail(f"task {t} at place {i} of slot {slot.key} is {e.state.value}")
    try:
        s.pool.check([slot.placement for slot in slots.values()])
    except AssertionError as err:
        _fail(f"resources: {err}")
    for request, open_ in s.open_slots.items():
        for key, slot in open_.items():
            if slot.key != key or slot.request != request:
                _fail(f"open slot {key} is filed under another key or shape")
            if slots.get(key) is not slot:
                _fail(f"open slot {key} has no running head")
            if not slot.lane:
                _fail(f"open slot {key} has no lane")


def _check_ready(s: Scheduler, ready: int) -> None:
    q = s.queue
    if len(q) != ready or len(q.live) != ready:
        _fail(f"the ready queue holds {len(q)} ({len(q.live)} live), {ready} tasks are ready")
    items = {(item[1], item[2]) for heap in q.heaps.values() for item in heap}
    for tid, generation in q.live.items():
        e = s.tasks.get(tid)
        if e is None or e.state is not READY:
            _fail(f"task {tid} is in the ready queue but not ready")
            return
        if generation != e.generation or (tid, generation) not in items:
            _fail(f"ready task {tid} is not in its shape's heap with its generation")
        if e.ready_since > s.now:
            _fail(f"ready task {tid} became ready after now")


def _check_retries(s: Scheduler) -> None:
    due = {(task, attempt) for _, task, attempt in s._retries}
    for tid, e in s.tasks.items():
        if e.state is RETRYING and (tid, e.attempt) not in due:
            _fail(f"retrying task {tid} attempt {e.attempt} has no due time")


def _check_attempts(s: Scheduler) -> None:
    """Attempt numbers never go down: each is handed out once."""
    seen = s._seen
    for tid, e in s.tasks.items():
        old = seen.get(tid)
        if old is not None and e.attempt < old[0]:
            _fail(f"task {tid}'s attempt went down from {old[0]} to {e.attempt}")
        seen[tid] = (e.attempt, e.state)
