"""Retry policies, reruns and the restore of a resumed run, in the pure core (fake clock)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shoal.core import (
    Cancel,
    Command,
    Dispatch,
    Failed,
    Node,
    Request,
    Scheduler,
    State,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    transitions,
)
from shoal.core.stimuli import Rerun, Restored
from shoal.errors import DefinitionError
from shoal.spec.retry import Backoff

PEN, RDY, RUN, RET = State.PENDING, State.READY, State.RUNNING, State.RETRYING
SUC, FAI, DEP, CAN, SKI = (
    State.SUCCEEDED,
    State.FAILED,
    State.DEP_FAILED,
    State.CANCELLED,
    State.SKIPPED,
)


def sched(cores: int = 2, memory: int = 0) -> Scheduler:
    return Scheduler([Node("n0", tuple(range(cores)), (), memory)])


def t(id: int, *deps: int, **kw: object) -> TaskInfo:
    return TaskInfo(id, tuple(deps), **kw)  # type: ignore[arg-type]


def steps(out: Sequence[Command]) -> list[tuple[int, State | None, State]]:
    return [(c.task, c.old, c.new) for c in transitions(out)]


def started(out: Sequence[Command]) -> list[int]:
    return [c.task for c in out if isinstance(c, Dispatch)]


# -- retry policies --
def test_fixed_back_off_waits_then_retries_until_the_budget_is_spent() -> None:
    s = sched()
    s.handle(Submitted(0, (t(0, retry=Backoff(retries=2, delay=10)),)))
    out = s.handle(Failed(1, 0, 1, "ValueError: no"))
    assert steps(out) == [(0, RUN, RET)] and not s.done
    assert s.handle(Tick(10.9)) == []  # still backing off
    out = s.handle(Tick(11.0))
    assert steps(out)[:2] == [(0, RET, RDY), (0, RDY, RUN)] and s.attempt(0) == 2
    s.handle(Failed(12, 0, 2, "ValueError: no"))
    s.handle(Tick(22))
    out = s.handle(Failed(23, 0, 3, "ValueError: no"))  # the third attempt: no retries left
    assert steps(out) == [(0, RUN, FAI)] and s.done


def test_exponential_back_off_with_deterministic_jitter() -> None:
    b = Backoff(retries=5, delay=1, factor=2, jitter=0.25, cap=6)
    delays = [b.delay_for(7, a, "error", "x", None) for a in range(1, 6)]
    assert all(d is not None for d in delays)
    bases = [1, 2, 4, 6, 6]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.75 <= d <= base * 1.25  # type: ignore[operator]
    assert delays == [b.delay_for(7, a, "error", "x", None) for a in range(1, 6)]
    assert b.delay_for(7, 6, "error", "x", None) is None
    assert delays != [b.delay_for(8, a, "error", "x", None) for a in range(1, 6)]


@pytest.mark.parametrize(
    ("on", "kind", "reason", "code", "retried"),
    [
        ({"timeout"}, "timeout", "timed out after 5 s", None, True),
        ({"timeout"}, "error", "ValueError: no", None, False),
        ({"lost"}, "lost", "the worker was lost", None, True),
        ({"MemoryError"}, "error", "MemoryError: ", None, True),
        ({"MemoryError"}, "error", "ValueError: x", None, False),
        ({137}, "exit", "exit code 137", 137, True),
        ({137}, "exit", "exit code 1", 1, False),
        (set(), "crash", "segfault", None, True),
        (set(), "cancelled", "cancelled by request", None, False),
    ],
)
def test_retry_on_selects_failures(
    on: set[str | int], kind: str, reason: str, code: int | None, retried: bool
) -> None:
    s = sched()
    s.handle(Submitted(0, (t(0, retry=Backoff(retries=1, on=frozenset(on))),)))
    s.handle(Failed(1, 0, 1, reason, kind, code))
    assert s.state(0) is (RET if retried else (CAN if kind == "cancelled" else FAI))


def test_escalation_doubles_the_timeout_and_raises_memory_within_the_node() -> None:
    s = sched(cores=2, memory=4000)
    policy = Backoff(retries=3, timeout_factor=2.0, memory_factor=2.0)
    s.handle(Submitted(0, (t(0, request=Request(memory=1500), timeout=5.0, retry=policy),)))
    s.handle(Failed(5, 0, 1, "timed out", "timeout"))
    s.handle(Tick(5))
    assert s.info(0).timeout == 10.0 and s.info(0).request.memory == 3000
    s.handle(Failed(6, 0, 2, "timed out", "timeout"))
    s.handle(Tick(6))
    # 6000 MB fits no node: the memory stays, the time still doubles
    assert s.info(0).timeout == 20.0 and s.info(0).request.memory == 3000
    s.pool.check(s.placements())


def test_a_task_backing_off_can_be_cancelled_and_its_downstream_with_it() -> None:
    s = sched()
    s.handle(Submitted(0, (t(0, retry=Backoff(retries=3, delay=60)), t(1, 0))))
    s.handle(Failed(1, 0, 1, "boom"))
    out = s.handle(Cancel(2, 0))
    assert (0, RET, CAN) in steps(out) and (1, PEN, CAN) in steps(out)
    assert s.handle(Tick(100)) == [] and s.done


# -- rerun --
def test_rerun_a_succeeded_task_alone_or_with_its_downstream() -> None:
    s = sched(cores=1)
    s.handle(Submitted(0, (t(0), t(1, 0), t(2, 1))))
    for i in range(3):
        s.handle(Succeeded(i + 1, i, 1))
    assert s.done
    out = s.handle(Rerun(5, 0))
    assert steps(out)[:2] == [(0, SUC, RDY), (0, RDY, RUN)] and s.state(1) is SUC
    s.handle(Succeeded(6, 0, 2))
    out = s.handle(Rerun(7, 1, downstream=True))
    assert (1, SUC, RDY) in steps(out) and (2, SUC, PEN) in steps(out)
    s.handle(Succeeded(8, 1, 2))
    assert s.state(2) is RUN and s.attempt(2) == 2


def test_rerun_is_refused_while_unfinished_or_blocked() -> None:
    s = sched(cores=1)
    s.handle(Submitted(0, (t(0), t(1, 0))))
    with pytest.raises(DefinitionError, match="has not finished"):
        s.handle(Rerun(1, 0))
    s.handle(Succeeded(1, 0, 1))
    with pytest.raises(DefinitionError, match="is running"):
        s.handle(Rerun(2, 0, downstream=True))
    s.handle(Failed(2, 1, 1, "x"))
    s.handle(Submitted(3, (t(2, 1),)))
    with pytest.raises(DefinitionError, match="did not succeed"):
        s.handle(Rerun(3, 2))


# -- restore --
def test_restore_keeps_finished_tasks_and_readies_the_rest() -> None:
    s = sched(cores=4)
    tasks = (t(0), t(1, 0), t(2, 1), t(3), t(4, 3), t(5), t(6, 5))
    states = (SUC, RUN, PEN, FAI, DEP, SUC, SKI)
    out = s.handle(Restored(9, tasks, states, (1, 1, 0, 2, 0, 1, 0)))
    assert (1, RUN, RDY) in steps(out), "the lost attempt runs again"
    assert started(out) == [1] and s.attempt(1) == 2
    assert s.state(0) is SUC and s.state(2) is PEN and s.state(3) is FAI
    assert s._table.records[4].root == 3 and s._table.records[6].root == 5
    assert not s.done
    s.handle(Succeeded(10, 1, 2))
    s.handle(Succeeded(11, 2, 1))
    assert s.done and s.counts[SUC] == 4


def test_restore_of_tasks_that_were_queued_when_the_driver_died() -> None:
    """A queued task lost its attempt like a running one: it becomes ready (or pending, a
    follower behind a lost parent) and its next attempt has a new number."""
    s = sched(cores=1)
    que = State.QUEUED
    out = s.handle(Restored(9, (t(0), t(1), t(2, 0)), (que, que, que), (3, 1, 1)))
    moves = [(c.task, c.old, c.new, c.reason) for c in transitions(out)]
    assert (0, que, RDY, "its attempt was lost with the driver") in moves
    assert (2, que, PEN, "resumed") in moves  # it waits for task 0 again
    assert started(out) == [0] and s.attempt(0) == 4
    out = s.handle(Succeeded(10, 0, 4))
    assert [(c.task, c.attempt) for c in out if isinstance(c, Dispatch)] == [(1, 2)]


def test_restore_applies_the_gates_of_responses() -> None:
    s = sched(cores=2)
    # task 0 succeeded with a detour (task 2) that its dependent (task 1) must wait for
    out = s.handle(Restored(0, (t(0), t(1, 0), t(2, 0)), (SUC, PEN, RUN), (1, 0, 1), ((1, (2,)),)))
    assert s.state(1) is PEN and started(out) == [2]
    s.handle(Succeeded(1, 2, 2))
    assert s.state(1) is RUN


def test_rerun_downstream_of_a_diamond_waits_for_every_parent() -> None:
    s = sched(cores=4)
    # 0 -> 1 -> 3, 0 -> 2 -> 3
    s.handle(Submitted(0, (t(0), t(1, 0), t(2, 0), t(3, 1, 2))))
    for i in (0, 1, 2, 3):
        s.handle(Succeeded(i + 1, i, 1))
    s.handle(Rerun(5, 0, downstream=True))
    assert [s.state(i) for i in range(4)] == [RUN, PEN, PEN, PEN]
    s.handle(Succeeded(6, 0, 2))
    s.handle(Succeeded(7, 2, 2))
    assert s.state(3) is PEN, "task 3 must wait for task 1 too"
    s.handle(Succeeded(8, 1, 2))
    assert s.state(3) is RUN and s._table.records[3].waiting == 0


def test_rerun_downstream_refuses_a_task_backing_off() -> None:
    s = sched(cores=2)
    s.handle(Submitted(0, (t(0), t(1, 0, retry=Backoff(retries=2, delay=60)))))
    s.handle(Succeeded(1, 0, 1))
    s.handle(Failed(2, 1, 1, "x"))
    with pytest.raises(DefinitionError, match="is retrying"):
        s.handle(Rerun(3, 0, downstream=True))


def test_a_manual_retry_gets_the_policy_s_retries_again() -> None:
    s = sched()
    s.handle(Submitted(0, (t(0, retry=Backoff(retries=1)),)))
    s.handle(Failed(1, 0, 1, "x"))
    s.handle(Tick(1))
    s.handle(Failed(2, 0, 2, "x"))
    assert s.state(0) is FAI
    from shoal.core import Retry

    s.handle(Retry(3, 0))
    s.handle(Failed(4, 0, 3, "x"))
    assert s.state(0) is RET, "the budget counts from the manual retry"
