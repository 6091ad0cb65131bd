"""Reopening and redirecting tasks: Responses' gates and skips, retries, reruns, stops and
the restore of a resumed run.

These are parts of :class:`~shoal.core.machine.Scheduler`'s one mutator, kept in their own
module to keep each small; they touch the scheduler's state only as its handlers do, and the
same invariants hold (core/validate.py checks them after every step in validation mode).
Like the handlers, each function here checks its event completely before it changes anything:
a refused request raises DefinitionError with the scheduler untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.core.events import Command, Kill, Rerun, Restored, Retry, Stop, Succeeded, Transition
from shoal.core.states import TERMINAL, State
from shoal.errors import DefinitionError, ResourceError

if TYPE_CHECKING:
    from shoal.core.machine import Scheduler, _Entry

PENDING, READY, QUEUED, RUNNING = State.PENDING, State.READY, State.QUEUED, State.RUNNING
RETRYING = State.RETRYING
SUCCEEDED, FAILED, CANCELLED = State.SUCCEEDED, State.FAILED, State.CANCELLED
DEP_FAILED, SKIPPED = State.DEP_FAILED, State.SKIPPED
REOPENABLE = frozenset({FAILED, CANCELLED})


def redirect(
    s: Scheduler, e: _Entry, children: list[int], ev: Succeeded, cause: str, out: list[Command]
) -> None:
    """Apply a Response to the dependents of ``e``: skip them, or make them wait for the
    gate tasks too (a detour, or the replacement standing in for ``e``)."""
    if ev.skip:
        rid = e.info.id
        start = [s.tasks[c] for c in children if s.tasks[c].state is PENDING]
        s._end_downstream(
            e, start, cause, out, SKIPPED, f"task {rid} stopped its children (Response)"
        )
        return
    gate = [s.tasks[g] for g in ev.gate]
    for c in children:
        child = s.tasks[c]
        ended = child.state in TERMINAL and child.state is not SUCCEEDED
        if child.state is not PENDING and not ended:
            continue
        # A child that another task upstream ended (failed, cancelled, skipped) gets the gates
        # too, without waiting for them now: a retry that reopens it counts them (seed 30073).
        for g in gate:
            if g.state is SUCCEEDED:
                continue
            if not ended:
                child.waiting += 1
            if child.gates is None:
                child.gates = [g.info.id]
            else:
                child.gates.append(g.info.id)
            if g.children is None:
                g.children = [c]
            else:
                g.children.append(c)
            if g.state in TERMINAL and not ended:  # it could never open (born failed)
                s._end_downstream(g, [child], cause, out)
                break


def retry(s: Scheduler, ev: Retry, cause: str, out: list[Command]) -> None:
    e = s.tasks.get(ev.task)
    if e is None:
        raise DefinitionError(f"cannot retry task {ev.task}: it is not part of this run")
    if e.state not in REOPENABLE:
        raise DefinitionError(
            f"cannot retry task {ev.task}: it is {e.state.value}; only failed or cancelled "
            "tasks can be retried"
            + (" (retry the task upstream that failed)" if e.state is DEP_FAILED else "")
        )
    if ev.info is not None:
        if ev.info.id != ev.task or ev.info.deps != e.info.deps:
            raise DefinitionError(f"retry of task {ev.task} must keep its id and dependencies")
        why = s.pool.refusal(ev.info.request)
        if why:
            raise ResourceError(f"task {ev.task} can never start: {why}")
    dep = blocker(s, e)
    if dep is not None:
        raise DefinitionError(
            f"cannot retry task {ev.task}: it depends on task {dep.info.id}, which is "
            f"{dep.state.value}; retry that one"
        )
    if ev.info is not None:
        e.info = ev.info
    reopen(s, e, cause, out, ev.reason)
    # Reopen what ended because of it, unless something else upstream still blocks it.
    rid = e.info.id
    stack = [s.tasks[c] for c in e.children or ()]
    while stack:
        down = stack.pop()
        if down.root != rid or down.state not in (DEP_FAILED, CANCELLED):
            continue
        other = blocker(s, down)
        if other is not None and other.state is not SKIPPED:
            down.root = other.root if other.root >= 0 else other.info.id
            continue  # it stays ended, now because of that other task
        reopen(s, down, cause, out, f"upstream task {rid} was retried")
        # Another task upstream stopped its children (a Response) meanwhile: it is one.
        stop = other or next((s.tasks[d] for d in down.waits_for() if s.tasks[d].skips), None)
        if stop is not None:
            sid = stop.root if stop.root >= 0 else stop.info.id
            why = f"task {sid} stopped its children (Response)"
            s._end_downstream(stop, [down], cause, out, SKIPPED, why)
        stack.extend(s.tasks[c] for c in down.children or ())


def rerun(s: Scheduler, ev: Rerun, cause: str, out: list[Command]) -> None:
    e = s.tasks.get(ev.task)
    if e is None:
        raise DefinitionError(f"cannot rerun task {ev.task}: it is not part of this run")
    if e.state not in TERMINAL:
        raise DefinitionError(
            f"cannot rerun task {ev.task}: it is {e.state.value}; it has not finished"
        )
    dep = blocker(s, e)
    if dep is not None:
        raise DefinitionError(
            f"cannot rerun task {ev.task}: task {dep.info.id} upstream of it did not succeed; "
            "retry or rerun that one"
        )
    for child in e.children or ():
        busy = started(s.tasks[child])
        if busy:
            raise DefinitionError(
                f"cannot rerun task {ev.task}: task {child} that depends on it {busy}; wait "
                "for it to end, or cancel it first"
            )
    down: list[_Entry] = []
    if ev.downstream:  # everything below it
        seen = {e.info.id}
        stack = list(e.children or ())
        while stack:
            c = s.tasks[stack.pop()]
            if c.info.id in seen:
                continue
            seen.add(c.info.id)
            busy = started(c)
            if busy:
                raise DefinitionError(
                    f"cannot rerun task {ev.task} with its downstream: task {c.info.id} "
                    f"{busy}; wait for it to end, or cancel it first"
                )
            down.append(c)
            stack.extend(c.children or ())
    # A finished task below stays as it is when something else upstream of it, not run
    # again, ended badly: it could not run anyway (decided to a fixpoint, as such tasks
    # keep the ones below them finished too).
    ids = {c.info.id for c in down} | {e.info.id}
    keep: set[int] = set()
    changed = True
    while changed:
        changed = False
        for c in down:
            if c.info.id in keep or c.state not in TERMINAL:
                continue
            for d in c.waits_for():
                x = s.tasks[d]
                bad = x.state in TERMINAL and x.state is not SUCCEEDED and d not in ids
                if bad or d in keep:
                    keep.add(c.info.id)
                    changed = True
                    break
    reopen(s, e, cause, out, ev.reason)
    why = f"upstream task {ev.task} runs again"
    for c in down:
        if c.info.id in keep:
            c.root = root_of(s, c)
        elif c.state in TERMINAL:
            c.root = -1
            c.kill = None
            c.first = c.attempt
            s._open += 1
            s._move(c, PENDING, cause, out, why)
        elif c.state is READY:  # it would have started on the old output
            s.queue.discard(c.info.id)
            s._move(c, PENDING, cause, out, why)
        elif c.state is QUEUED:  # handed to a worker, not started: take it back
            s._take_back(c, cause, out, why)
    # Then everything that waits below the reopened tasks counts again what it waits for:
    # counting while parents were still being reopened would miss some of them.
    again = [e, *(c for c in down if c.info.id not in keep)]
    affected: dict[int, _Entry] = {c.info.id: c for c in again[1:]}
    for r in again:
        for child in r.children or ():
            x = s.tasks[child]
            if x.state is QUEUED:  # handed to a worker, not started: take it back
                s._take_back(x, cause, out, why)
            if x.state is PENDING or x.state is READY:
                affected[child] = x
    for c in affected.values():
        c.waiting = sum(1 for d in c.waits_for() if s.tasks[d].state is not SUCCEEDED)
        if c.state is READY and c.waiting:
            s.queue.discard(c.info.id)
            s._move(c, PENDING, cause, out, why)
        elif c.state is PENDING and c.waiting == 0:
            s._ready(c, cause, out, why)


def started(c: _Entry) -> str:
    """Why a rerun upstream of ``c`` cannot take it back, or "": it started on the old
    output (running, or retrying), or it is being stopped already. A task queued behind
    another on a worker has not started: the rerun takes it back."""
    if c.state is RUNNING or c.state is RETRYING:
        return f"is {c.state.value}"
    if c.state is QUEUED and c.kill is not None:
        return f"is queued and being stopped ({c.kill[0]})"
    return ""


def restore(s: Scheduler, ev: Restored, cause: str, out: list[Command]) -> None:
    """Rebuild a resumed run: finished tasks as they were, the rest ready or pending."""
    from shoal.core.machine import _Entry  # the scheduler's record of a task

    if not (len(ev.tasks) == len(ev.states) == len(ev.attempts)):
        raise DefinitionError("a restored run needs one state and attempt count per task")
    s._check_submission(ev.tasks)
    ids = {t.id for t in ev.tasks}
    for task, gate in ev.gates:
        unknown = [g for g in (task, *gate) if g not in ids and g not in s.tasks]
        if task not in ids or unknown:
            raise DefinitionError(
                f"a restored run's gates of task {task} name tasks that are not part of it: "
                f"{unknown or [task]}"
            )
    for t, state, attempts in zip(ev.tasks, ev.states, ev.attempts, strict=True):
        e = s.tasks[t.id] = _Entry(t)
        e.attempt = attempts
        e.state = state
    for task, gate in ev.gates:
        s.tasks[task].gates = list(gate)
    for t in ev.tasks:
        e = s.tasks[t.id]
        for d in e.waits_for():
            dep = s.tasks[d]
            if dep.children is None:
                dep.children = [t.id]
            else:
                dep.children.append(t.id)
    for t in ev.tasks:  # ids grow with the run, so a task's upstream comes first
        e = s.tasks[t.id]
        state = e.state
        s.counts[state] += 1
        if state in TERMINAL:
            if state in (DEP_FAILED, CANCELLED, SKIPPED):
                e.root = root_of(s, e)
            continue
        s._open += 1
        e.waiting = sum(1 for d in e.waits_for() if s.tasks[d].state is not SUCCEEDED)
        bad = blocker(s, e)
        lost = state is RUNNING or state is QUEUED
        if e.waiting == 0:
            if state is READY:
                e.generation += 1
                e.ready_since = s.now
                s.queue.push(t.id, t.request, t.priority, e.generation, t.estimate)
            else:
                why = "its attempt was lost with the driver" if lost else "resumed"
                s._ready(e, cause, out, why)
        elif state is not PENDING:
            s.counts[state] -= 1
            s.counts[PENDING] += 1
            out.append(Transition(cause, t.id, state, PENDING, s.now, "resumed", e.attempt))
            e.state = PENDING
        if bad is not None and e.state is PENDING:
            s._end_downstream(bad, [e], cause, out)


def blocker(s: Scheduler, e: _Entry) -> _Entry | None:
    """The first task ``e`` waits for that ended without success (so ``e`` cannot run)."""
    for d in e.waits_for():
        dep = s.tasks[d]
        if dep.state in TERMINAL and dep.state is not SUCCEEDED:
            return dep
    return None


def root_of(s: Scheduler, e: _Entry) -> int:
    """Where the failure, cancellation or skip that ended ``e`` started."""
    dep = blocker(s, e)
    if dep is not None:
        return dep.root if dep.root >= 0 else dep.info.id
    if e.state is SKIPPED:  # skipped by the Response of a task that succeeded
        return next((d for d in e.waits_for() if s.tasks[d].state is SUCCEEDED), -1)
    return -1


def reopen(s: Scheduler, e: _Entry, cause: str, out: list[Command], reason: str) -> None:
    e.waiting = sum(1 for d in e.waits_for() if s.tasks[d].state is not SUCCEEDED)
    e.root = -1
    e.kill = None
    e.skips = False
    e.first = e.attempt  # a retry policy counts its retries from here
    s._open += 1
    if e.waiting == 0:
        s._ready(e, cause, out, reason)
    else:
        s._move(e, PENDING, cause, out, reason)


def stop(s: Scheduler, ev: Stop, cause: str, out: list[Command]) -> None:
    if not s.stopped:
        s.stopped = ev.reason or "stopped"
    if ev.drain:
        return
    for e in list(s.running.values()):
        slot = e.slot
        for t in list(slot.tasks) if slot is not None else [e.info.id]:
            q = s.tasks[t]
            if q.kill is None:
                q.kill = ("stopped", ev.reason)
                out.append(Kill(cause, t, q.attempt, ev.reason, "stopped"))
