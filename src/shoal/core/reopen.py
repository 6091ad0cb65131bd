"""Reopening and redirecting tasks: Responses' gates and skips, retries, reruns, stops and
the restore of a resumed run.

These are handlers of :class:`~shoal.core.machine.Scheduler`'s one mutator, over the task
table (:mod:`shoal.core.tasks`) and the attempts in flight (:mod:`shoal.core.chains`), which
they change only through those modules, as the other handlers do. Like them, each function here
checks its stimulus completely before it changes anything: a refused request raises
:class:`~shoal.errors.RequestRefused` with the scheduler untouched.
"""

from __future__ import annotations

from shoal.core.chains import Chains
from shoal.core.commands import Command
from shoal.core.states import TERMINAL
from shoal.core.stimuli import RerunRequested, Restored, RetryRequested, Succeeded
from shoal.core.tasks import (
    CANCELLED,
    DEP_FAILED,
    PENDING,
    QUEUED,
    READY,
    REOPENABLE,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TaskRecord,
    TaskTable,
)
from shoal.errors import RequestRefused, ResourceError


def redirect(
    table: TaskTable,
    e: TaskRecord,
    children: list[int],
    ev: Succeeded,
    cause: str,
    out: list[Command],
) -> None:
    """Apply a Response to the dependents of ``e``: skip them, or make them wait for the
    gate tasks too (a detour, or the replacement standing in for ``e``)."""
    records = table.records
    if ev.skip:
        rid = e.info.id
        start = [records[c] for c in children if records[c].state is PENDING]
        table.end_downstream(
            e, start, cause, out, SKIPPED, f"task {rid} stopped its children (Response)"
        )
        return
    gate = [records[g] for g in ev.gate]
    for c in children:
        child = records[c]
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
                table.end_downstream(g, [child], cause, out)
                break


def retry(
    table: TaskTable, chains: Chains, ev: RetryRequested, cause: str, out: list[Command]
) -> None:
    e = _known(table, ev.task, "retry")
    if e.state not in REOPENABLE:
        raise RequestRefused(
            f"cannot retry task {ev.task}: it is {e.state.value}; only failed or cancelled "
            "tasks can be retried"
            + (" (retry the task upstream that failed)" if e.state is DEP_FAILED else "")
        )
    if ev.info is not None:
        if ev.info.id != ev.task or ev.info.deps != e.info.deps:
            raise RequestRefused(f"retry of task {ev.task} must keep its id and dependencies")
        why = table.pool.refusal(ev.info.request)
        if why:
            raise ResourceError(f"task {ev.task} can never start: {why}")
    dep = table.blocker(e)
    if dep is not None:
        raise RequestRefused(
            f"cannot retry task {ev.task}: it depends on task {dep.info.id}, which is "
            f"{dep.state.value}; retry that one"
        )
    tolerant = [c for c in table.children_of(e) if table.met(c, e)]  # it failed: they ran on
    for c in tolerant:
        busy = started(chains, c)
        if busy:
            raise RequestRefused(
                f"cannot retry task {ev.task}: task {c.info.id}, which runs despite its "
                f"failure, {busy}; wait for it to end, or cancel it first"
            )
    if ev.info is not None:
        e.info = ev.info
    reopen(table, e, cause, out, ev.reason)
    # Those that tolerate its failure and have not started wait for it again.
    why = f"upstream task {e.info.id} was retried"
    for c in tolerant:
        if c.state in (PENDING, READY, QUEUED):
            if c.state is QUEUED:  # handed to a worker, not started: take it back
                chains.take_back(c, cause, out, why)
            c.waiting = table.unmet(c)
            if c.state is READY and c.waiting:
                table.unready(c, cause, out, why)
    # Reopen what ended because of it, unless something else upstream still blocks it.
    records = table.records
    rid = e.info.id
    stack = table.children_of(e)
    while stack:
        down = stack.pop()
        if down.root != rid or down.state not in (DEP_FAILED, CANCELLED):
            continue
        other = table.blocker(down)
        if other is not None and other.state is not SKIPPED:
            down.root = other.started_at()
            continue  # it stays ended, now because of that other task
        reopen(table, down, cause, out, f"upstream task {rid} was retried")
        # Another task upstream stopped its children (a Response) meanwhile: it is one.
        stop = other or next((records[d] for d in down.waits_for() if records[d].skips), None)
        if stop is not None:
            why = f"task {stop.started_at()} stopped its children (Response)"
            table.end_downstream(stop, [down], cause, out, SKIPPED, why)
        stack.extend(table.children_of(down))


def _known(table: TaskTable, task: int, verb: str) -> TaskRecord:
    e = table.records.get(task)
    if e is None:
        raise RequestRefused(f"cannot {verb} task {task}: it is not part of this run")
    return e


def rerun(
    table: TaskTable, chains: Chains, ev: RerunRequested, cause: str, out: list[Command]
) -> None:
    e = _known(table, ev.task, "rerun")
    if e.state not in TERMINAL:
        raise RequestRefused(
            f"cannot rerun task {ev.task}: it is {e.state.value}; it has not finished"
        )
    dep = table.blocker(e)
    if dep is not None:
        raise RequestRefused(
            f"cannot rerun task {ev.task}: task {dep.info.id} upstream of it did not succeed; "
            "retry or rerun that one"
        )
    for child in table.children_of(e):
        busy = started(chains, child)
        if busy:
            raise RequestRefused(
                f"cannot rerun task {ev.task}: task {child.info.id} that depends on it {busy}; "
                "wait for it to end, or cancel it first"
            )
    down = _downstream(table, chains, e, ev) if ev.downstream else []
    keep = _kept(table, e, down)
    reopen(table, e, cause, out, ev.reason)
    why = f"upstream task {ev.task} runs again"
    for c in down:
        if c.info.id in keep:
            c.root = table.root_of(c)
        elif c.state in TERMINAL:
            c.root = None
            c.first = c.attempt
            table.move(c, PENDING, cause, out, why)
        elif c.state is READY:  # it would have started on the old output
            table.unready(c, cause, out, why)
        elif c.state is QUEUED:  # handed to a worker, not started: take it back
            chains.take_back(c, cause, out, why)
    # Then everything that waits below the reopened tasks counts again what it waits for:
    # counting while parents were still being reopened would miss some of them.
    again = [e, *(c for c in down if c.info.id not in keep)]
    affected: dict[int, TaskRecord] = {c.info.id: c for c in again[1:]}
    for r in again:
        for x in table.children_of(r):
            if x.state is QUEUED:  # handed to a worker, not started: take it back
                chains.take_back(x, cause, out, why)
            if x.state is PENDING or x.state is READY:
                affected[x.info.id] = x
    for c in affected.values():
        c.waiting = table.unmet(c)
        if c.state is READY and c.waiting:
            table.unready(c, cause, out, why)
        elif c.state is PENDING and c.waiting == 0:
            table.ready(c, cause, out, why)


def _downstream(
    table: TaskTable, chains: Chains, e: TaskRecord, ev: RerunRequested
) -> list[TaskRecord]:
    """Everything below ``e`` (refused if any of it started on the old output)."""
    down: list[TaskRecord] = []
    seen = {e.info.id}
    stack = list(e.children or ())
    while stack:
        c = table.records[stack.pop()]
        if c.info.id in seen:
            continue
        seen.add(c.info.id)
        busy = started(chains, c)
        if busy:
            raise RequestRefused(
                f"cannot rerun task {ev.task} with its downstream: task {c.info.id} "
                f"{busy}; wait for it to end, or cancel it first"
            )
        down.append(c)
        stack.extend(c.children or ())
    return down


def _kept(table: TaskTable, e: TaskRecord, down: list[TaskRecord]) -> set[int]:
    """The finished tasks below that stay as they are: something else upstream of them, not
    run again, ended badly, so they could not run anyway (decided to a fixpoint, as such
    tasks keep the ones below them finished too)."""
    ids = {c.info.id for c in down} | {e.info.id}
    keep: set[int] = set()
    changed = True
    while changed:
        changed = False
        for c in down:
            if c.info.id in keep or c.state not in TERMINAL:
                continue
            for d in c.waits_for():
                x = table.records[d]
                bad = x.state in TERMINAL and not table.met(c, x) and d not in ids
                if bad or d in keep:
                    keep.add(c.info.id)
                    changed = True
                    break
    return keep


def started(chains: Chains, c: TaskRecord) -> str:
    """Why a rerun upstream of ``c`` cannot take it back, or "": it started on the old
    output (running, or retrying), or it is being stopped already. A task queued behind
    another on a worker has not started: the rerun takes it back."""
    if c.state is RUNNING or c.state is RETRYING:
        return f"is {c.state.value}"
    kill = chains.kill_of(c.info.id) if c.state is QUEUED else None
    if kill is not None:
        return f"is queued and being stopped ({kill[0]})"
    return ""


def restore(table: TaskTable, ev: Restored, cause: str, out: list[Command]) -> None:
    """Rebuild a resumed run: finished tasks as they were, the rest ready or pending."""
    if not (len(ev.tasks) == len(ev.states) == len(ev.attempts)):
        raise RequestRefused("a restored run needs one state and attempt count per task")
    table.check_submission(ev.tasks)
    ids = {t.id for t in ev.tasks}
    for task, gate in ev.gates:
        unknown = [g for g in (task, *gate) if g not in ids and g not in table.records]
        if task not in ids or unknown:
            raise RequestRefused(
                f"a restored run's gates of task {task} name tasks that are not part of it: "
                f"{unknown or [task]}"
            )
    table.restore(ev.tasks, ev.states, ev.attempts, ev.gates, cause, out)


def reopen(table: TaskTable, e: TaskRecord, cause: str, out: list[Command], reason: str) -> None:
    """A finished task waits or is ready again, its retry budget counted afresh."""
    e.waiting = table.unmet(e)
    e.root = None
    e.skips = False
    e.first = e.attempt  # a retry policy counts its retries from here
    if e.waiting == 0:
        table.ready(e, cause, out, reason)
    else:
        table.move(e, PENDING, cause, out, reason)
