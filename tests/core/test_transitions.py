"""Table-driven tests of the pure scheduling core: states, scenarios, resources and policies.

Every scenario drives ``Scheduler.handle`` with events stamped by a fake clock (plain floats) and
compares the exact sequence of ``(task, old, new)`` transitions it returns with the table.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from shoal.core import (
    Born,
    Cancel,
    Command,
    Dispatch,
    Failed,
    Kill,
    Node,
    Policy,
    Pool,
    Request,
    Scheduler,
    State,
    Stimulus,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    Transition,
    transitions,
)
from shoal.core.ready import band, urgency
from shoal.core.states import TERMINAL, TRANSITIONS, IllegalTransition, check
from shoal.core.stimuli import Rerun, Returned
from shoal.errors import DefinitionError, ResourceError

PEN, RDY, QUE, RUN = State.PENDING, State.READY, State.QUEUED, State.RUNNING
SUC, FAI, DEP, CAN = State.SUCCEEDED, State.FAILED, State.DEP_FAILED, State.CANCELLED

Step = tuple[int, State | None, State]


def task(id: int, *deps: int, **kw: object) -> TaskInfo:
    kw.setdefault("lane", "workers")  # queueable (in lane "workers") unless a test says otherwise
    return TaskInfo(id, tuple(deps), **kw)  # type: ignore[arg-type]


def sub(now: float, *tasks: TaskInfo) -> Submitted:
    return Submitted(now, tuple(tasks))


def steps(commands: Sequence[Command]) -> list[Step]:
    return [(c.task, c.old, c.new) for c in transitions(commands)]


def dispatched(commands: Sequence[Command]) -> list[int]:
    return [c.task for c in commands if isinstance(c, Dispatch)]


# -- (a) the transition table ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new"),
    list(itertools.product(State, State)),
    ids=lambda s: s.value,
)
def test_check_raises_exactly_for_transitions_not_in_the_table(old: State, new: State) -> None:
    if new in TRANSITIONS[old]:
        check(7, old, new)
    else:
        with pytest.raises(IllegalTransition, match=rf"task 7: {old.value} -> {new.value}"):
            check(7, old, new)


def test_terminal_states_leave_only_by_reopening() -> None:
    # A terminal state has no way forward: its only way out is a Retry, back to pending or
    # ready. Every other state has a way forward.
    assert set(TRANSITIONS) == set(State)
    reopen = {State.PENDING, State.READY}
    assert {s for s, news in TRANSITIONS.items() if news <= reopen} == TERMINAL
    assert all(news for news in TRANSITIONS.values())
    assert all(s.terminal == (s in TERMINAL) for s in State)


# -- (b) scenarios ---------------------------------------------------------------------------
PREFETCH = Policy(prefetch=2, prefetch_window=10.0)
FOLLOW = Policy(prefetch=2, prefetch_window=10.0, follow=True)
WARM = (sub(0, task(0)), Succeeded(1, 0, 1))  # one 1 s run: prefetch now knows the shape is short
WARMED = ((0, None, RDY), (0, RDY, RUN), (0, RUN, SUC))
FOLLOWING = (*WARM, sub(1, task(1), task(2, 1, follow=True)))  # 2 follows 1 (FOLLOW)
# 2 is taken back while 1 runs, and is ready and runs once 1 succeeded
TAKEN_BACK = (
    *WARMED,
    (1, None, RDY),
    (2, None, PEN),
    (1, RDY, RUN),
    (2, PEN, QUE),
    (2, QUE, PEN),
    (1, RUN, SUC),
    (2, PEN, RDY),
    (2, RDY, RUN),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    events: tuple[Stimulus, ...]
    transitions: tuple[Step, ...]
    cores: int = 1
    policy: Policy | None = None
    kills: tuple[tuple[int, str], ...] = ()  # (task, text in the kill reason), in order
    reasons: tuple[tuple[int, str], ...] = ()  # (task, text in the reason of its last transition)
    queued_after: tuple[tuple[int, int], ...] = ()  # (task, after) of each prefetch Dispatch
    done: bool | None = None
    ordered: bool = True  # False: the same transitions, in any order


SCENARIOS = [
    Scenario(
        "no deps: born ready, running at once",
        (sub(0, task(0)),),
        ((0, None, RDY), (0, RDY, RUN)),
        done=False,
    ),
    Scenario(
        "success readies and starts a dependent",
        (sub(0, task(0), task(1, 0)), Succeeded(1, 0, 1), Succeeded(2, 1, 1)),
        (
            (0, None, RDY),
            (1, None, PEN),
            (0, RDY, RUN),
            (0, RUN, SUC),
            (1, PEN, RDY),
            (1, RDY, RUN),
            (1, RUN, SUC),
        ),
        done=True,
    ),
    Scenario(
        "a task waits for all of its deps",
        (sub(0, task(0), task(1), task(2, 0, 1)), Succeeded(1, 1, 1), Succeeded(2, 0, 1)),
        (
            (0, None, RDY),
            (1, None, RDY),
            (2, None, PEN),
            (0, RDY, RUN),
            (1, RDY, RUN),
            (1, RUN, SUC),
            (0, RUN, SUC),
            (2, PEN, RDY),
            (2, RDY, RUN),
        ),
        cores=2,
    ),
    Scenario(
        "failure: dependents dep_failed transitively, the independent branch still succeeds",
        (
            sub(0, task(0), task(1, 0), task(2, 1), task(3), task(4, 3)),
            Failed(1, 0, 1, "boom"),
            Succeeded(2, 3, 1),
            Succeeded(3, 4, 1),
        ),
        (
            (0, None, RDY),
            (1, None, PEN),
            (2, None, PEN),
            (3, None, RDY),
            (4, None, PEN),
            (0, RDY, RUN),
            (3, RDY, RUN),
            (0, RUN, FAI),
            (1, PEN, DEP),
            (2, PEN, DEP),
            (3, RUN, SUC),
            (4, PEN, RDY),
            (4, RDY, RUN),
            (4, RUN, SUC),
        ),
        cores=2,
        reasons=((0, "boom"), (1, "upstream task 0 failed"), (2, "upstream task 0 failed")),
        done=True,
    ),
    Scenario(
        "failure in a diamond ends every task below it exactly once",
        (sub(0, task(0), task(1, 0), task(2, 0), task(3, 1, 2)), Failed(1, 0, 1, "boom")),
        (
            (0, None, RDY),
            (1, None, PEN),
            (2, None, PEN),
            (3, None, PEN),
            (0, RDY, RUN),
            (0, RUN, FAI),
            (1, PEN, DEP),
            (2, PEN, DEP),
            (3, PEN, DEP),
        ),
        done=True,
        ordered=False,
    ),
    Scenario(
        "cancel of a pending task cancels it and its dependents",
        (sub(0, task(0), task(1, 0), task(2, 1)), Cancel(1, 1), Succeeded(2, 0, 1)),
        (
            (0, None, RDY),
            (1, None, PEN),
            (2, None, PEN),
            (0, RDY, RUN),
            (1, PEN, CAN),
            (2, PEN, CAN),
            (0, RUN, SUC),
        ),
        reasons=((1, "cancelled by request"), (2, "upstream task 1 was cancelled")),
        done=True,
    ),
    Scenario(
        "cancel of a ready task: it never starts",
        (sub(0, task(0), task(1)), Cancel(1, 1), Succeeded(2, 0, 1)),
        ((0, None, RDY), (1, None, RDY), (0, RDY, RUN), (1, RDY, CAN), (0, RUN, SUC)),
        done=True,
    ),
    Scenario(
        "cancel of a finished task changes nothing",
        (sub(0, task(0)), Succeeded(1, 0, 1), Cancel(2, 0)),
        ((0, None, RDY), (0, RDY, RUN), (0, RUN, SUC)),
        done=True,
    ),
    Scenario(
        "cancel of a running task: one Kill, then its Failed ends it cancelled",
        (
            sub(0, task(0), task(1, 0)),
            Cancel(1, 0, "user said stop"),
            Cancel(1.5, 0, "again"),
            Failed(2, 0, 1, "terminated by signal 15", kind="exit"),
        ),
        ((0, None, RDY), (1, None, PEN), (0, RDY, RUN), (0, RUN, CAN), (1, PEN, CAN)),
        kills=((0, "user said stop"),),
        reasons=((0, "user said stop"), (1, "upstream task 0 was cancelled")),
        done=True,
    ),
    Scenario(
        "cancel of a running task that succeeds before the kill lands: it succeeded",
        (sub(0, task(0), task(1, 0)), Cancel(1, 0), Succeeded(2, 0, 1)),
        (
            (0, None, RDY),
            (1, None, PEN),
            (0, RDY, RUN),
            (0, RUN, SUC),
            (1, PEN, RDY),
            (1, RDY, RUN),
        ),
        kills=((0, "cancelled by request"),),
    ),
    Scenario(
        "timeout: a Tick past start + timeout kills once; the Failed ends it failed",
        (
            sub(10, task(0, timeout=5.0), task(1, 0)),
            Tick(14.9),
            Tick(15.1),
            Tick(20),
            Failed(21, 0, 1, "terminated by signal 15", kind="exit"),
        ),
        ((0, None, RDY), (1, None, PEN), (0, RDY, RUN), (0, RUN, FAI), (1, PEN, DEP)),
        kills=((0, "timed out"),),
        reasons=((0, "timed out after 5 s"), (1, "upstream task 0 failed")),
        done=True,
    ),
    Scenario(
        "timeout: a task that ends in time is never killed",
        (sub(0, task(0, timeout=5.0)), Succeeded(3, 0, 1), Tick(100)),
        ((0, None, RDY), (0, RDY, RUN), (0, RUN, SUC)),
        done=True,
    ),
    Scenario(
        "stale Succeeded/Failed/Returned events (wrong attempt, not running, unknown) are ignored",
        (
            sub(0, task(0), task(1)),
            Succeeded(1, 0, 2),
            Failed(1, 0, 0, "old attempt"),
            Returned(1, 0, 2),
            Succeeded(1, 1, 1),
            Failed(1, 1, 1, "not running"),
            Returned(1, 1, 1),
            Succeeded(1, 99, 1),
            Returned(1, 99, 1),
            Succeeded(2, 0, 1),
            Failed(3, 0, 1, "late report"),
            Succeeded(3, 0, 1),
            Returned(3, 0, 1),
            Succeeded(4, 1, 2),
            Succeeded(5, 1, 1),
        ),
        (
            (0, None, RDY),
            (1, None, RDY),
            (0, RDY, RUN),
            (0, RUN, SUC),
            (1, RDY, RUN),
            (1, RUN, SUC),
        ),
        done=True,
    ),
    Scenario(
        "a task submitted after its dep failed ends dep_failed at once",
        (sub(0, task(0)), Failed(1, 0, 1, "boom"), sub(2, task(1, 0))),
        ((0, None, RDY), (0, RDY, RUN), (0, RUN, FAI), (1, None, PEN), (1, PEN, DEP)),
        reasons=((1, "upstream task 0 failed"),),
        done=True,
    ),
    Scenario(
        "a task submitted after its dep was cancelled is cancelled at once",
        (sub(0, task(0), task(1)), Cancel(0, 1), sub(1, task(2, 1))),
        (
            (0, None, RDY),
            (1, None, RDY),
            (0, RDY, RUN),
            (1, RDY, CAN),
            (2, None, PEN),
            (2, PEN, CAN),
        ),
        reasons=((2, "upstream task 1 was cancelled"),),
    ),
    Scenario(
        "a task submitted after its dep succeeded is born ready and starts at once",
        (sub(0, task(0)), Succeeded(1, 0, 1), sub(2, task(1, 0))),
        ((0, None, RDY), (0, RDY, RUN), (0, RUN, SUC), (1, None, RDY), (1, RDY, RUN)),
        done=False,
    ),
    Scenario(
        "returned unstarted: ready again, and the report of the old attempt is stale",
        (sub(0, task(0)), Returned(1, 0, 1), Succeeded(1.5, 0, 1), Succeeded(2, 0, 2)),
        ((0, None, RDY), (0, RDY, RUN), (0, RUN, RDY), (0, RDY, RUN), (0, RUN, SUC)),
        done=True,
    ),
    Scenario(
        "returned while a cancel is in flight: cancelled, with its dependents",
        (sub(0, task(0), task(1, 0)), Cancel(1, 0), Returned(2, 0, 1)),
        ((0, None, RDY), (1, None, PEN), (0, RDY, RUN), (0, RUN, CAN), (1, PEN, CAN)),
        kills=((0, "cancelled by request"),),
        done=True,
    ),
    Scenario(
        "prefetch: short tasks queue behind a running one and take over its slot in turn",
        (
            *WARM,
            sub(1, task(1), task(2), task(3), task(4)),
            Succeeded(2, 1, 1),
            Succeeded(3, 2, 1),
            Succeeded(4, 3, 1),
            Succeeded(5, 4, 1),
        ),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, RDY),
            (3, None, RDY),
            (4, None, RDY),
            (1, RDY, RUN),
            (2, RDY, QUE),
            (3, RDY, QUE),  # at most prefetch=2 behind one slot
            (1, RUN, SUC),
            (2, QUE, RUN),
            (4, RDY, QUE),
            (2, RUN, SUC),
            (3, QUE, RUN),
            (3, RUN, SUC),
            (4, QUE, RUN),
            (4, RUN, SUC),
        ),
        policy=PREFETCH,
        queued_after=((2, 1), (3, 2), (4, 3)),
        done=True,
    ),
    Scenario(
        "prefetch: nothing is queued before a task of the shape has finished",
        (sub(0, task(0), task(1)),),
        ((0, None, RDY), (1, None, RDY), (0, RDY, RUN)),
        policy=PREFETCH,
    ),
    Scenario(
        "prefetch: nothing is queued behind a shape slower than the window",
        (sub(0, task(0)), Succeeded(20, 0, 1), sub(20, task(1), task(2))),
        (
            (0, None, RDY),
            (0, RDY, RUN),
            (0, RUN, SUC),
            (1, None, RDY),
            (2, None, RDY),
            (1, RDY, RUN),
        ),
        policy=PREFETCH,
    ),
    Scenario(
        "cancel of a queued task: Kill, the backend drops it, cancelled; the slot moves on",
        (
            *WARM,
            sub(1, task(1), task(2), task(3)),
            Cancel(2, 2),
            Failed(2, 2, 1, "dropped", kind="cancelled"),
            Succeeded(3, 1, 1),
            Succeeded(4, 3, 1),
        ),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, RDY),
            (3, None, RDY),
            (1, RDY, RUN),
            (2, RDY, QUE),
            (3, RDY, QUE),
            (2, QUE, CAN),
            (1, RUN, SUC),
            (3, QUE, RUN),
            (3, RUN, SUC),
        ),
        policy=PREFETCH,
        kills=((2, "cancelled by request"),),
        queued_after=((2, 1), (3, 2)),
        done=True,
    ),
    Scenario(
        "a cancelled queued task that reaches its slot first is killed again once it runs",
        (
            *WARM,
            sub(1, task(1), task(2)),
            Cancel(2, 2),
            Succeeded(3, 1, 1),
            Failed(4, 2, 1, "terminated", kind="exit"),
        ),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, RDY),
            (1, RDY, RUN),
            (2, RDY, QUE),
            (1, RUN, SUC),
            (2, QUE, RUN),
            (2, RUN, CAN),
        ),
        policy=PREFETCH,
        kills=((2, "cancelled by request"), (2, "cancelled by request")),
        reasons=((2, "cancelled by request"),),
        queued_after=((2, 1),),
        done=True,
    ),
    Scenario(
        # Returned means the slot is lost: everything queued on it comes back, and nothing is
        # queued on it again; the running head still holds its cores until its outcome.
        "a queued task returned unstarted gives back its slot's queue",
        (*WARM, sub(1, task(1), task(2), task(3)), Returned(2, 3, 1)),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, RDY),
            (3, None, RDY),
            (1, RDY, RUN),
            (2, RDY, QUE),
            (3, RDY, QUE),
            (2, QUE, RDY),
            (3, QUE, RDY),
        ),
        policy=PREFETCH,
        queued_after=((2, 1), (3, 2)),
    ),
    Scenario(
        "a dep_failed task rerun once its upstream was rerun and succeeded is ready at once",
        (
            sub(0, task(0), task(1, 0)),
            Failed(1, 0, 1, "boom"),
            Rerun(2, 0),
            Succeeded(3, 0, 2),
            Rerun(4, 1),
        ),
        (
            (0, None, RDY),
            (1, None, PEN),
            (0, RDY, RUN),
            (0, RUN, FAI),
            (1, PEN, DEP),
            (0, FAI, RDY),
            (0, RDY, RUN),
            (0, RUN, SUC),
            (1, DEP, RDY),
            (1, RDY, RUN),
        ),
    ),
    # -- followers: a dependent queued behind the one task it still waits for -----------------
    Scenario(
        "a dependent follows the task it waits for and starts when that one succeeds",
        (*WARM, sub(1, task(1), task(2, 1, follow=True)), Succeeded(2, 1, 1), Succeeded(3, 2, 1)),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, PEN),
            (1, RDY, RUN),
            (2, PEN, QUE),
            (1, RUN, SUC),
            (2, QUE, RUN),  # no pending -> ready: it was in place already
            (2, RUN, SUC),
        ),
        policy=FOLLOW,
        queued_after=((2, 1),),
        reasons=((2, ""),),
        done=True,
    ),
    Scenario(
        "without the policy a dependent waits to be ready",
        (*FOLLOWING, Succeeded(2, 1, 1)),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, PEN),
            (1, RDY, RUN),
            (1, RUN, SUC),
            (2, PEN, RDY),
            (2, RDY, RUN),
        ),
        policy=PREFETCH,
    ),
    Scenario(
        "a follower's own dependent does not follow it; a failure takes the follower back",
        (
            *WARM,
            sub(1, task(1), *(task(i, i - 1, follow=True) for i in (2, 3, 4))),
            Failed(2, 1, 1, "boom"),
        ),
        (
            *WARMED,
            (1, None, RDY),
            (2, None, PEN),
            (3, None, PEN),
            (4, None, PEN),
            (1, RDY, RUN),
            (2, PEN, QUE),
            (2, QUE, PEN),  # taken back first: it must not start behind a failure
            (1, RUN, FAI),
            (2, PEN, DEP),
            (3, PEN, DEP),
            (4, PEN, DEP),
        ),
        policy=FOLLOW,
        queued_after=((2, 1),),
        reasons=((2, "upstream task 1 failed"), (4, "upstream task 1 failed")),
        done=True,
    ),
    Scenario(
        "a follower of a task that returns a Response is taken back, then runs as usual",
        (*FOLLOWING, Succeeded(2, 1, 1, response=True)),
        TAKEN_BACK,
        policy=FOLLOW,
        queued_after=((2, 1),),
    ),
    Scenario(
        "a ready task more urgent than a follower takes the place behind the running one",
        (*WARM, sub(1, task(1)), sub(2, task(2, 1, follow=True), task(3, priority=5))),
        (*WARMED, (1, None, RDY), (1, RDY, RUN), (2, None, PEN), (3, None, RDY), (3, RDY, QUE)),
        policy=FOLLOW,
        queued_after=((3, 1),),
    ),
    Scenario(
        "a follower whose slot is lost waits again for the task it followed",
        (*FOLLOWING, Returned(2, 2, 1), Succeeded(3, 1, 1)),
        TAKEN_BACK,
        policy=FOLLOW,
        queued_after=((2, 1),),
    ),
]


def play(s: Scenario) -> tuple[Scheduler, list[Command]]:
    sched = Scheduler([Node.sized("n0", s.cores)], s.policy)
    out: list[Command] = []
    for ev in s.events:
        got = sched.handle(ev)
        for c in got:
            if isinstance(c, Transition | Born):
                assert c.time == ev.now  # the fake clock only moves forward in these tables
        out += got
    return sched, out


@pytest.mark.parametrize("s", SCENARIOS, ids=lambda s: s.name)
def test_scenario(s: Scenario) -> None:
    sched, out = play(s)
    got = steps(out)
    if s.ordered:
        assert got == list(s.transitions)
    else:
        assert Counter(got) == Counter(s.transitions)

    # each ready -> running (or queued) move is followed at once by the Dispatch of the next
    # attempt of that task: a fresh one for running, one behind another task for queued
    attempts: Counter[int] = Counter()
    for i, c in enumerate(out):
        if not isinstance(c, Transition):
            continue
        if (c.old is RDY and c.new in (RUN, QUE)) or (c.old is PEN and c.new is QUE):
            d = out[i + 1]
            attempts[c.task] += 1
            assert isinstance(d, Dispatch) and (d.task, d.attempt) == (c.task, attempts[c.task])
            assert (d.after is None) == (c.new is RUN)
            assert d.follows == (c.old is PEN)  # a follower is dispatched as one
    assert len(dispatched(out)) == attempts.total()
    queued = [(d.task, d.after) for d in out if isinstance(d, Dispatch) and d.after is not None]
    assert queued == list(s.queued_after)

    kills = [c for c in out if isinstance(c, Kill)]
    assert [k.task for k in kills] == [t for t, _ in s.kills]
    for k, (_, text) in zip(kills, s.kills, strict=True):
        assert text in k.reason

    for t, text in s.reasons:
        last = [c for c in transitions(out) if c.task == t][-1]
        assert text in last.reason, (t, last.reason)

    # the scheduler's own view agrees with the transitions it reported
    final = {t: new for t, _, new in got}
    assert {t: sched.state(t) for t in sched.ids()} == final
    assert sched.counts == {st: sum(1 for v in final.values() if v is st) for st in State}
    sched.pool.check(sched.placements())
    if s.done is not None:
        assert sched.done is s.done


def test_returned_attempt_reports_why() -> None:
    sched = Scheduler([Node.sized("n0", 1)])
    sched.handle(sub(0, task(0)))
    out = sched.handle(Returned(1, 0, 1))
    assert out[0] == Transition(
        "returned(task 0, attempt 1)", 0, RUN, RDY, 1, "returned unstarted by the backend", 1
    )


def test_tasks_returned_from_a_lost_slot_get_a_fresh_placement() -> None:
    """A worker dies while running task 1 with tasks 2 and 3 queued behind it (prefetch). Like
    the local backend, the fake backend below fails the running task and returns every attempt
    that is queued on the dead slot, including ones dispatched onto it later. "Returned" means
    the slot was lost (events.Returned), so tasks 2 and 3 must end up dispatched afresh."""
    sched = Scheduler([Node.sized("n0", 1)], PREFETCH)
    for ev in WARM:
        sched.handle(ev)
    out = sched.handle(sub(1, task(1), task(2), task(3)))
    assert [(d.task, d.after) for d in out if isinstance(d, Dispatch)] == [
        (1, None),
        (2, 1),
        (3, 2),
    ]
    dead = {1, 2, 3}  # tasks whose slot is the dead worker
    backend: deque[Stimulus] = deque([Returned(2, 2, 1), Returned(2, 3, 1)])
    sched.handle(Failed(2, 1, 1, "worker died", kind="lost"))
    fresh: list[int] = []
    for step in range(20):
        if not backend or fresh:
            break
        for c in sched.handle(backend.popleft()):
            if isinstance(c, Dispatch) and c.after in dead:
                dead.add(c.task)
                backend.append(Returned(3 + step, c.task, c.attempt))
            elif isinstance(c, Dispatch):
                fresh.append(c.task)
    assert fresh, (
        f"tasks 2 and 3 were queued on the lost slot again and again (states "
        f"{ {t: sched.state(t).value for t in (2, 3)} }, attempts "
        f"{ {t: sched.attempt(t) for t in (2, 3)} }); its core is never freed"
    )


def test_timeout_counts_from_the_start_of_the_attempt() -> None:
    sched = Scheduler([Node.sized("n0", 1)])
    sched.handle(sub(0, task(0), task(1, timeout=5.0)))
    assert dispatched(sched.handle(Succeeded(4, 0, 1))) == [1]
    assert sched.handle(Tick(8.5)) == []  # 8.5 s after submission, 4.5 s after the start
    (kill,) = sched.handle(Tick(9.5))
    assert isinstance(kill, Kill) and (kill.task, kill.attempt) == (1, 1)
    assert kill.reason == "timed out after 5 s"
    assert sched.state(1) is RUN  # still holds its core until the backend reports the end
    assert sched.placements() == [sched.placement(1)]


def test_dep_failed_at_submission_names_the_root_task() -> None:
    """Whether a chain fails all at once or its tail is submitted after the failure, the tail's
    reason names the task that actually failed (DEP_FAILED: "the root task is recorded")."""
    at_once = Scheduler([Node.sized("n0", 1)])
    at_once.handle(sub(0, task(0), task(1, 0), task(2, 1)))
    out = at_once.handle(Failed(1, 0, 1, "boom"))
    assert {c.task: c.reason for c in transitions(out)}[2] == ("upstream task 0 failed")

    later = Scheduler([Node.sized("n0", 1)])
    later.handle(sub(0, task(0)))
    later.handle(Failed(1, 0, 1, "boom"))
    out = later.handle(sub(2, task(1, 0), task(2, 1)))
    reasons = {c.task: c.reason for c in transitions(out) if c.new is DEP}
    assert reasons[1] == "upstream task 0 failed"
    # task 1 never ran, so "upstream task 1 failed" would blame the wrong task
    assert reasons[2] == "upstream task 0 failed"


# -- (b) definition errors: raised before anything changes -----------------------------------
def snapshot(sched: Scheduler) -> object:
    return (
        {t: sched.state(t) for t in sched.ids()},
        dict(sched.counts),
        sched.pool.totals(),
        len(sched._table.heap),
        sched.done,
    )


@pytest.mark.parametrize(
    ("tasks", "text"),
    [
        ((task(0, 5),), "task 0 depends on unknown task 5"),
        ((task(0), task(1, 0), task(2, 7)), "task 2 depends on unknown task 7"),
        ((task(0), task(0)), "same task id twice"),
        ((task(9),), "task id 9 is already part of this run"),
    ],
    ids=["unknown-dep", "unknown-dep-in-batch", "duplicate-in-batch", "duplicate-id"],
)
def test_bad_submission_raises_definition_error_and_changes_nothing(
    tasks: tuple[TaskInfo, ...], text: str
) -> None:
    sched = Scheduler([Node.sized("n0", 2)])
    sched.handle(sub(0, task(9)))
    before = snapshot(sched)
    with pytest.raises(DefinitionError, match=text) as info:
        sched.handle(Submitted(1, tasks))
    assert not isinstance(info.value, ResourceError)
    assert snapshot(sched) == before
    assert set(sched.ids()) == {9}


def test_cancel_of_an_unknown_task_raises() -> None:
    sched = Scheduler([Node.sized("n0", 2)])
    with pytest.raises(DefinitionError, match="cannot cancel task 3"):
        sched.handle(Cancel(0, 3))


class Strange(Stimulus):
    pass


def test_unknown_event_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="Strange"):
        Scheduler([Node.sized("n0", 1)]).handle(Strange(0))


@pytest.mark.parametrize(
    ("nodes", "request_", "texts"),
    [
        ([Node.sized("n0", 16)], Request(cpus=32), ["32 cores", "the only node", "16 cores"]),
        (
            [Node.sized("a", 8), Node.sized("b", 16, gpus=0)],
            Request(cpus=32),
            ["32 cores", "the largest node", "'b'", "16 cores", "2 nodes"],
        ),
        ([Node.sized("cpu", 16)], Request(gpus=1), ["1 core + 1 GPU", "16 cores, 0 GPUs"]),
        (
            [Node.sized("a", 16), Node.sized("b", 16)],
            Request(cpus=8, ranks=5),
            ["5 ranks × (8 cores)", "16 cores", "2 nodes"],
        ),
        (
            [Node.sized("g", 16, gpus=2), Node.sized("h", 16, gpus=2)],
            Request(cpus=1, gpus=1, ranks=5),
            ["5 ranks × (1 core + 1 GPU)", "16 cores, 2 GPUs"],
        ),
        ([Node.sized("m", 16, memory=1000)], Request(memory=2000), ["2000 MB", "1000 MB"]),
        ([Node.sized("n0", 16)], Request(ranks=0), ["not valid"]),
    ],
    ids=["cores", "cores-many-nodes", "no-gpus", "ranks", "gpu-ranks", "memory", "invalid"],
)
def test_impossible_request_raises_resource_error_and_changes_nothing(
    nodes: list[Node], request_: Request, texts: list[str]
) -> None:
    sched = Scheduler(nodes)
    assert sched.refusal(request_) is not None
    before = snapshot(sched)
    with pytest.raises(ResourceError) as info:
        sched.handle(sub(0, task(0), task(7, 0, request=request_)))
    msg = str(info.value)
    assert "task 7 can never start" in msg
    for text in texts:
        assert text in msg, msg
    assert sched.ids() == []
    assert snapshot(sched) == before


# -- (c) resources ---------------------------------------------------------------------------
def test_pool_allocates_the_lowest_free_ids_and_release_restores() -> None:
    pool = Pool((Node.sized("n0", 8, gpus=4),))
    a = pool.allocate(Request(cpus=3, gpus=1))
    b = pool.allocate(Request(cpus=2, gpus=2))
    assert a is not None and b is not None
    assert (a.cores, a.gpus) == ((0, 1, 2), (0,))
    assert (b.cores, b.gpus) == ((3, 4), (1, 2))
    pool.check([a, b])
    assert pool.totals() == {"cores": 8, "gpus": 4, "free_cores": 3, "free_gpus": 1}

    pool.release(a)
    pool.check([b])
    c = pool.allocate(Request(cpus=4))
    assert c is not None and c.cores == (0, 1, 2, 5)  # the gap left by a, then above b
    pool.release(b)
    pool.release(c)
    pool.check([])
    assert pool.totals() == {"cores": 8, "gpus": 4, "free_cores": 8, "free_gpus": 4}


def test_pool_refuses_what_does_not_fit_now_and_changes_nothing() -> None:
    pool = Pool((Node.sized("n0", 4, gpus=1),))
    held = pool.allocate(Request(cpus=3))
    assert held is not None
    before = pool.totals()
    assert not pool.fits(Request(cpus=2))
    assert pool.allocate(Request(cpus=2)) is None
    assert pool.allocate(Request(gpus=2)) is None
    assert pool.totals() == before
    pool.check([held])


def test_pool_double_release_is_caught() -> None:
    pool = Pool((Node.sized("n0", 4),))
    p = pool.allocate(Request(cpus=2))
    assert p is not None
    pool.release(p)
    with pytest.raises(AssertionError, match="already free"):
        pool.release(p)


def test_multi_rank_task_stays_on_one_node_when_one_fits() -> None:
    pool = Pool((Node.sized("small", 4), Node.sized("big", 8)))
    p = pool.allocate(Request(cpus=2, ranks=3))
    assert p is not None
    assert [(s.node, s.ranks, s.cores) for s in p.slots] == [(1, 3, (0, 1, 2, 3, 4, 5))]


def test_multi_rank_task_spreads_across_nodes_when_no_single_node_fits() -> None:
    pool = Pool((Node.sized("a", 4, gpus=1), Node.sized("b", 4, gpus=2)))
    req = Request(cpus=2, gpus=1, ranks=3)
    assert pool.refusal(req) is None
    p = pool.allocate(req)
    assert p is not None
    assert [(s.node, s.ranks, s.cores, s.gpus) for s in p.slots] == [
        (0, 1, (0, 1), (0,)),  # node a: its one GPU limits it to one rank
        (1, 2, (0, 1, 2, 3), (0, 1)),
    ]
    pool.check([p])
    assert pool.totals()["free_cores"] == 2 and pool.totals()["free_gpus"] == 0
    assert pool.allocate(Request(cpus=1, gpus=1)) is None
    pool.release(p)
    pool.check([])
    assert pool.totals() == {"cores": 8, "gpus": 3, "free_cores": 8, "free_gpus": 3}


def test_pool_tracks_memory_per_node() -> None:
    pool = Pool((Node.sized("m", 8, memory=4000),))
    a = pool.allocate(Request(cpus=1, memory=3000))
    assert a is not None and a.slots[0].memory == 3000
    assert pool.allocate(Request(cpus=1, memory=2000)) is None  # cores free, memory not
    pool.check([a])
    pool.release(a)
    b = pool.allocate(Request(cpus=1, memory=2000, ranks=2))
    assert b is not None and b.slots[0].memory == 4000
    pool.check([b])


def test_pool_refusal_messages() -> None:
    one = Pool((Node.sized("n0", 16),))
    assert one.refusal(Request(cpus=16)) is None
    assert one.refusal(Request(cpus=32)) == (
        "it asks for 32 cores, but the only node is node 'n0': 16 cores, 0 GPUs"
    )
    two = Pool((Node.sized("a", 16), Node.sized("b", 16, gpus=2, memory=512)))
    assert two.refusal(Request(cpus=8, ranks=4)) is None  # spread over both nodes
    assert two.refusal(Request(cpus=8, ranks=5)) == (
        "it asks for 5 ranks × (8 cores), but the largest node is node 'b': "
        "16 cores, 2 GPUs, 512 MB (and there are 2 nodes)"
    )
    assert two.refusal(Request(gpus=3)) is not None
    assert "not valid" in (two.refusal(Request(cpus=-1)) or "")


def test_pool_needs_a_node() -> None:
    with pytest.raises(ResourceError, match="at least one node"):
        Pool(())


# -- (d) policies ----------------------------------------------------------------------------
def test_backfill_starts_a_small_task_while_a_large_one_waits() -> None:
    sched = Scheduler([Node.sized("n0", 4)], Policy(reserve_after=60))
    assert dispatched(sched.handle(sub(0, task(0, request=Request(cpus=2))))) == [0]
    assert dispatched(sched.handle(sub(1, task(1, request=Request(cpus=4))))) == []
    # task 1 is more urgent (older) but cannot fit; the small task behind it may start
    assert dispatched(sched.handle(sub(2, task(2, request=Request(cpus=1))))) == [2]
    assert sched.state(1) is RDY
    sched.handle(Succeeded(3, 0, 1))
    assert sched.state(1) is RDY  # task 2 still holds a core
    assert dispatched(sched.handle(Succeeded(4, 2, 1))) == [1]


def stream(
    reserve_after: float, steps_: int = 40, big_estimate: float = 0.0, small_estimate: float = 0.0
) -> tuple[list[tuple[float, int]], int]:
    """A 4-core node, one 4-core task (id 4) and a steady stream of 1-core tasks: every second
    the oldest running small task succeeds and a new one is submitted. Returns the dispatches
    as (time, task) and the id of the large task."""
    sched = Scheduler([Node.sized("n0", 4)], Policy(reserve_after=reserve_after))
    log: list[tuple[float, int]] = []
    running: deque[int] = deque()

    def feed(*events: Stimulus) -> None:
        for c in sched.handle(*events):
            if isinstance(c, Dispatch):
                log.append((sched.now, c.task))
                running.append(c.task)

    feed(sub(0, *(task(i) for i in range(4))))
    big = 4
    feed(sub(0, task(big, request=Request(cpus=4), estimate=big_estimate)))
    assert sched.state(big) is RDY
    for i in range(1, steps_):
        now = float(i)
        finished = running.popleft()
        if finished == big:
            break
        feed(Succeeded(now, finished, 1), sub(now, task(big + i, estimate=small_estimate)))
        sched.pool.check(sched.placements())
    return log, big


def test_reservation_starts_a_starving_large_task() -> None:
    wait = 10.0
    log, big = stream(reserve_after=wait)
    started = [t for t, task_ in log if task_ == big]
    assert started, "the 4-core task never started"
    # before reserve_after: backfill, small tasks submitted after the large one started
    assert any(task_ > big and t < wait for t, task_ in log)
    # the clock starts when a younger task first starts ahead of it (t = 1: waiting behind
    # the four tasks that were running already is no starvation); from reserve_after later
    # on the node drains (the small tasks have no estimate: none could end before it fits)
    passed = 1.0
    assert not [task_ for t, task_ in log if passed + wait <= t < started[0] and task_ != big]
    # it started as soon as the 4 small tasks running at reserve_after had all finished
    assert started[0] == passed + wait + 3


@pytest.mark.parametrize(("big_estimate", "small_estimate"), [(0.0, 100.0), (10.0, 100.0)])
def test_longer_estimates_do_not_switch_the_reservation_off(
    big_estimate: float, small_estimate: float
) -> None:
    """Small tasks with longer estimates sort first, but the reservation goes to the task that
    has waited longest at the top priority: the large one still starts."""
    wait = 10.0
    log, big = stream(wait, big_estimate=big_estimate, small_estimate=small_estimate)
    started = [t for t, task_ in log if task_ == big]
    assert started and started[0] <= 1 + wait + 3, log


def test_waiting_in_a_long_queue_is_not_starving() -> None:
    """The starvation clock runs only while younger tasks start ahead of the oldest: a large
    task that waited 100 s behind long tasks (nothing passing it) gets no reservation, so a
    small task that fits starts at once; once passed over for reserve_after, it gets one."""
    sched = Scheduler([Node.sized("n0", 4)], Policy(reserve_after=10))
    sched.handle(sub(0, task(0, request=Request(cpus=3)), task(1, request=Request(cpus=4))))
    assert dispatched(sched.handle(sub(100, task(2)))) == [2]  # passed over from now on
    assert dispatched(sched.handle(Succeeded(105, 2, 1), sub(105, task(3)))) == [3]
    # at 110 it has been passed over for 10 s: the node keeps its core for it
    assert dispatched(sched.handle(Succeeded(110, 3, 1), sub(110, task(4)))) == []
    assert dispatched(sched.handle(Succeeded(111, 0, 1))) == [1]


def test_a_reserved_node_takes_only_what_does_not_delay_the_starving_task() -> None:
    """EASY backfilling on the reserved node: with the running tasks' estimates, a task that
    will end before the starving one fits may start there, and one that fits in what it
    leaves spare; a longer one may not."""
    node = Node.sized("n0", 8, 2)
    sched = Scheduler([node], Policy(reserve_after=0))
    sched.handle(sub(0, task(0, request=Request(cpus=4), estimate=10.0)))
    big = task(1, request=Request(cpus=7), estimate=5.0)  # fits at t = 10, leaving 1 core
    assert dispatched(sched.handle(sub(1, big))) == []
    two = task(2, request=Request(cpus=2), estimate=50.0)  # would delay it
    assert dispatched(sched.handle(sub(2, two))) == []
    assert dispatched(sched.handle(sub(3, task(3, estimate=5.0)))) == [3]  # ends at 8 < 10
    spare = task(4, request=Request(cpus=1, gpus=1), estimate=80.0)  # in what is spare at 10
    assert dispatched(sched.handle(sub(4, spare))) == [4]
    assert sched.state(2) is RDY
    assert dispatched(sched.handle(Succeeded(8, 3, 1))) == []  # 2 is still too long
    assert 1 in dispatched(sched.handle(Succeeded(10, 0, 1)))  # on time


def test_idle_gpus_go_to_gpu_tasks_first_among_equals() -> None:
    """Among equally urgent tasks (no priority, no estimate), one that uses an idle GPU
    starts before an older CPU task: the cores the CPU task would take are used later, an
    idle GPU is lost."""
    sched = Scheduler([Node.sized("n0", 4, 1)], Policy())
    sched.handle(sub(0, task(0, request=Request(cpus=3))))
    out = sched.handle(sub(1, task(1, request=Request(cpus=1)), task(2, request=Request(1, 1))))
    assert dispatched(out) == [2]


def test_without_reservation_the_large_task_starves() -> None:
    """The same stream with the reservation switched off: it never starts (so the test above
    depends on the reservation, not on luck)."""
    log, big = stream(reserve_after=math.inf)
    assert big not in [task_ for _, task_ in log]
    assert len(log) > 30


def test_higher_priority_starts_first_then_older() -> None:
    sched = Scheduler([Node.sized("n0", 1)])
    sched.handle(sub(0, task(0)))
    sched.handle(
        sub(0, task(1, priority=0), task(2, priority=5), task(3, priority=1), task(4, priority=5))
    )
    order = []
    current = 0
    for i in range(1, 5):
        (current,) = dispatched(sched.handle(Succeeded(i, current, 1)))
        order.append(current)
    assert order == [2, 4, 3, 1]


def test_equal_priority_starts_the_longest_estimate_first() -> None:
    """Among equal priority the longer estimate starts first, across shapes too; tasks
    without an estimate follow in submission order; priority still comes before estimates."""
    sched = Scheduler([Node.sized("n0", 1, 0, 1000)])
    other = Request(cpus=1, memory=10)  # another shape: another heap
    sched.handle(sub(0, task(0)))
    sched.handle(
        sub(
            0,
            task(1),
            task(2, estimate=5.0),
            task(3, estimate=500.0, request=other),
            task(4, estimate=0.5),
            task(5),
            task(6, estimate=0.1, priority=1),
            task(7, estimate=50.0, request=other),
        )
    )
    order = []
    running = [0]
    now = 1.0
    while running:
        done = running.pop(0)
        started = dispatched(sched.handle(Succeeded(now, done, 1)))
        order += started
        running += started
        now += 1
    assert order == [6, 3, 7, 2, 4, 1, 5]


def test_the_estimate_never_outranks_priority() -> None:
    """The estimate is folded into less than one priority step, however long it is."""
    for long in (1e-3, 1.0, 3600.0, 1e5):
        assert urgency(1, 0.0) < urgency(0, long) < urgency(0, 0.0)
        assert urgency(0, long) < urgency(0, long / 2)
    assert urgency(-3, 10.0) < urgency(-4, 0.0)
    assert urgency(0, 1e300) < urgency(0, 0.0) and urgency(1, 0.0) < urgency(0, 1e300)
    assert band(urgency(7, 3.0)) == band(urgency(7, 0.0)) == -7
    assert urgency(2**40, 5.0) == -(2**40)  # past what a float can fold: no estimate


def test_priority_applies_across_resource_shapes() -> None:
    sched = Scheduler([Node.sized("n0", 2)])
    sched.handle(sub(0, task(0, request=Request(cpus=2))))
    sched.handle(
        sub(
            1,
            task(1, request=Request(cpus=1), priority=0),
            task(2, request=Request(cpus=2), priority=9),
            task(3, request=Request(cpus=1), priority=5),
        )
    )
    # task 1 would fit, but the more urgent 2-core task takes the node first
    assert dispatched(sched.handle(Succeeded(2, 0, 1))) == [2]
    assert dispatched(sched.handle(Succeeded(3, 2, 1))) == [3, 1]


@pytest.mark.parametrize(
    ("mode", "after_each"),
    [("waves", [[], [], [], [4, 5]]), ("backfill", [[4], [5], [], []])],
)
def test_waves_start_nothing_while_the_wave_runs(mode: str, after_each: list[list[int]]) -> None:
    sched = Scheduler([Node.sized("n0", 4)], Policy(mode=mode))
    assert dispatched(sched.handle(sub(0, *(task(i) for i in range(6))))) == [0, 1, 2, 3]
    got = [dispatched(sched.handle(Succeeded(i + 1, i, 1))) for i in range(4)]
    assert got == after_each


@pytest.mark.parametrize(
    "kw", [{"mode": "bogus"}, {"reserve_after": -1.0}], ids=["bogus-mode", "negative-wait"]
)
def test_bad_policy_raises_definition_error(kw: dict[str, object]) -> None:
    with pytest.raises(DefinitionError):
        Policy(**kw)  # type: ignore[arg-type]


def test_tasks_queue_only_behind_tasks_of_their_lane() -> None:
    """Only tasks with a lane are prefetched, and only behind a running task of the same lane:
    nothing queues behind a task without one, and a "process" task not behind a "workers" one."""
    sched = Scheduler([Node.sized("n0", 1)], PREFETCH)
    sched.handle(Submitted(0.0, (task(0),)))
    sched.handle(Succeeded(0.001, 0, 1))  # teaches the shape's run time: 1 ms
    out = sched.handle(Submitted(1.0, (task(1, lane=None), task(2, lane="process"), task(3))))
    assert [d.after for d in out if isinstance(d, Dispatch)] == [None]  # task 1 runs alone
    assert sched.state(2) is RDY and sched.state(3) is RDY  # 2 may not queue; 3 waits its turn
    out = sched.handle(Succeeded(1.001, 1, 1))
    assert [(d.task, d.after) for d in out if isinstance(d, Dispatch)] == [(2, None)]
    out = sched.handle(Succeeded(1.002, 2, 1))
    assert [(d.task, d.after) for d in out if isinstance(d, Dispatch)] == [(3, None)]


@pytest.mark.parametrize(("order", "first"), [("largest", 4), ("fifo", 0)])
def test_equal_priority_starts_the_largest_request_first(order: str, first: int) -> None:
    """Among equal priority the largest request starts first (small ones fill the gaps after
    it); order="fifo" keeps submission order instead."""
    sched = Scheduler([Node.sized("n0", 4)], Policy(order=order))
    small = [task(i) for i in range(4)]
    big = task(4, request=Request(cpus=4))
    out = sched.handle(Submitted(0.0, (*small, big)))
    started = [d.task for d in out if isinstance(d, Dispatch)]
    assert started[0] == first
    assert started == ([4] if order == "largest" else [0, 1, 2, 3])


def test_largest_first_puts_size_before_estimate() -> None:
    """order="largest": among equal priority the biggest request first, whatever the
    estimates; the estimate orders requests of the same size."""
    sched = Scheduler([Node.sized("n0", 4)], Policy(order="largest"))
    out = sched.handle(
        Submitted(
            0.0,
            (task(0, estimate=1.0), task(1, request=Request(cpus=4), estimate=0.5)),
        )
    )
    assert [d.task for d in out if isinstance(d, Dispatch)] == [1]


def test_priority_still_beats_size() -> None:
    sched = Scheduler([Node.sized("n0", 4)], Policy(order="largest"))
    out = sched.handle(Submitted(0.0, (task(0, request=Request(cpus=4)), task(1, priority=1))))
    assert [d.task for d in out if isinstance(d, Dispatch)] == [1]


def test_an_outcome_for_a_task_still_queued_is_a_backend_bug_not_a_hang() -> None:
    """A backend that runs a queued task before the one ahead of it ends breaks the contract;
    the core says so instead of dropping the report (which would leave the run hanging)."""
    sched = Scheduler([Node.sized("n0", 1)], PREFETCH)
    for ev in WARM:
        sched.handle(ev)
    sched.handle(Submitted(2.0, (task(1), task(2))))
    assert sched.state(2) is QUE
    with pytest.raises(IllegalTransition, match="queued behind task 1"):
        sched.handle(Succeeded(2.5, 2, 1))
