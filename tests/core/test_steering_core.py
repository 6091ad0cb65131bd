"""The core's side of steering, with a fake clock and no processes: work added by a Response
(add, detour/replace gates, skipped children), retries that reopen downstream tasks, and stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from shoal.core import (
    Cancel,
    Command,
    Dispatch,
    Failed,
    Kill,
    Node,
    Policy,
    Request,
    Retry,
    Scheduler,
    State,
    Stop,
    Submitted,
    Succeeded,
    TaskInfo,
    transitions,
)
from shoal.errors import DefinitionError, ResourceError

PEN, RDY, RUN, SUC = State.PENDING, State.READY, State.RUNNING, State.SUCCEEDED
FAI, DEP, CAN, SKI = State.FAILED, State.DEP_FAILED, State.CANCELLED, State.SKIPPED


def node(cores: int = 4, gpus: int = 0) -> Node:
    return Node("n0", tuple(range(cores)), tuple(range(gpus)))


def t(id: int, *deps: int, **kw: object) -> TaskInfo:
    return TaskInfo(id, tuple(deps), **kw)  # type: ignore[arg-type]


def steps(commands: Sequence[Command]) -> list[tuple[int, State | None, State]]:
    return [(c.task, c.old, c.new) for c in transitions(commands)]


def started(commands: Sequence[Command]) -> list[int]:
    return [c.task for c in commands if isinstance(c, Dispatch)]


def attempt(s: Scheduler, task: int) -> int:
    return s.attempt(task)


def check(s: Scheduler) -> None:
    s.pool.check(s.placements())


# -- Response: add, gates and skips -------------------------------------------------------------
def test_added_tasks_run_and_the_dependents_do_not_wait_for_them() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1, 0))))
    # task 0 adds task 2, which uses its output; task 1 (its dependent) does not wait for 2
    out = s.handle(Succeeded(1, 0, 1, add=(t(2, 0),)))
    assert (2, None, PEN) in steps(out)
    assert (0, RUN, SUC) in steps(out)
    assert s.state(1) in (RDY, RUN) and s.state(2) in (RDY, RUN)
    check(s)


def test_detour_gates_the_dependents_until_every_detour_task_succeeded() -> None:
    s = Scheduler([node(4)])
    s.handle(Submitted(0, (t(0), t(1, 0))))
    out = s.handle(Succeeded(1, 0, 1, add=(t(2, 0), t(3, 2)), gate=(2, 3)))
    assert s.state(1) is PEN, "the dependent must wait for the detour"
    assert started(out) == [2]
    out = s.handle(Succeeded(2, 2, 1))
    assert s.state(1) is PEN and started(out) == [3]
    out = s.handle(Succeeded(3, 3, 1))
    assert started(out) == [1]
    check(s)


def test_a_failed_detour_fails_the_dependents_and_names_it() -> None:
    s = Scheduler([node(2)])
    s.handle(Submitted(0, (t(0), t(1, 0))))
    s.handle(Succeeded(1, 0, 1, add=(t(2, 0),), gate=(2,)))
    out = s.handle(Failed(2, 2, 1, "boom"))
    assert (1, PEN, DEP) in steps(out)
    assert s._table.records[1].root == 2
    assert s.done


def test_replace_chain_a_loop_hands_the_dependents_on() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1, 0))))
    new = 2
    for i in range(5):  # each replacement replaces itself again
        prev = 0 if i == 0 else new - 1
        s.handle(Succeeded(i + 1, prev, attempt(s, prev), add=(t(new),), gate=(new,)))
        assert s.state(1) is PEN
        new += 1
    s.handle(Succeeded(9, new - 1, attempt(s, new - 1)))
    assert s.state(1) in (RDY, RUN)
    assert s.counts[SUC] == 6


def test_stop_children_skips_the_whole_subtree_and_leaves_siblings_alone() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1, 0), t(2, 1), t(3))))
    out = s.handle(Succeeded(1, 0, 1, skip=True))
    assert (1, PEN, SKI) in steps(out) and (2, PEN, SKI) in steps(out)
    assert s._table.records[2].root == 0
    assert s.state(3) in (RDY, RUN), "the independent sibling goes on"
    s.handle(Succeeded(2, 3, 1))
    assert s.done
    # a task added later that depends on a skipped one is skipped too
    out = s.handle(Submitted(3, (t(4, 2),)))
    assert s.state(4) is SKI


def test_invalid_added_work_is_refused_before_anything_changes() -> None:
    s = Scheduler([node(2)])
    s.handle(Submitted(0, (t(0), t(1, 0))))
    with pytest.raises(ResourceError, match="can never start"):
        s.handle(Succeeded(1, 0, 1, add=(t(2, request=Request(cpus=8)),)))
    with pytest.raises(DefinitionError, match="cycle"):
        s.handle(Succeeded(1, 0, 1, add=(t(2, 3), t(3, 2))))
    with pytest.raises(DefinitionError, match="unknown task 9"):
        s.handle(Succeeded(1, 0, 1, gate=(9,)))
    assert s.state(0) is RUN and 2 not in s, "a refused response changed nothing"


# -- retry --
def test_retry_reopens_the_task_and_what_failed_because_of_it() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1, 0), t(2, 1))))
    out = s.handle(Failed(1, 0, 1, "boom"))
    assert s.done and s.state(2) is DEP
    out = s.handle(Retry(2, 0))
    assert (0, FAI, RDY) in steps(out) and (1, DEP, PEN) in steps(out)
    assert (2, DEP, PEN) in steps(out)
    assert not s.done and started(out) == [0] and attempt(s, 0) == 2
    s.handle(Succeeded(3, 0, 2))
    s.handle(Succeeded(4, 1, 1))
    s.handle(Succeeded(5, 2, 1))
    assert s.done and s.counts[SUC] == 3


def test_retry_with_a_new_request_and_timeout() -> None:
    s = Scheduler([node(4)])
    s.handle(Submitted(0, (t(0, timeout=1.0),)))
    s.handle(Failed(2, 0, 1, "timed out", "timeout"))
    out = s.handle(Retry(3, 0, t(0, request=Request(cpus=4), timeout=10.0)))
    assert s.placement(0) is not None and len(s.placement(0).cores) == 4  # type: ignore[union-attr]
    from shoal.core import Tick

    assert not any(isinstance(c, Kill) for c in s.handle(Tick(12.0)))  # the old 1 s limit is gone
    out = s.handle(Tick(13.5))
    assert [c.kind for c in out if isinstance(c, Kill)] == ["timeout"]
    check(s)


def test_retry_is_refused_for_tasks_that_did_not_fail() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1, 0), t(2))))
    with pytest.raises(DefinitionError, match="running"):
        s.handle(Retry(1, 0))
    s.handle(Failed(1, 0, 1, "boom"))
    with pytest.raises(DefinitionError, match="retry the task upstream"):
        s.handle(Retry(1, 1))
    with pytest.raises(ResourceError):
        s.handle(Retry(1, 0, t(0, request=Request(cpus=5))))
    with pytest.raises(DefinitionError, match="keep its id and dependencies"):
        s.handle(Retry(1, 0, t(0, 2)))
    assert s.state(0) is FAI


def test_a_task_downstream_of_two_failures_stays_ended_until_both_are_retried() -> None:
    s = Scheduler([node(2)])
    s.handle(Submitted(0, (t(0), t(1), t(2, 0, 1))))
    s.handle(Failed(1, 0, 1, "a"), Failed(1, 1, 1, "b"))
    assert s.state(2) is DEP
    s.handle(Retry(2, 0))
    assert s.state(2) is DEP and s._table.records[2].root == 1, "still blocked by task 1"
    s.handle(Retry(2, 1))
    assert s.state(2) is PEN


def test_retry_of_a_cancelled_task_reopens_its_cancelled_dependents() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1, 0))))
    out = s.handle(Cancel(1, 0))
    s.handle(Failed(2, 0, 1, "killed", "cancelled"))
    assert s.state(1) is CAN
    out = s.handle(Retry(3, 0))
    assert (1, CAN, PEN) in steps(out)


# -- stop --
def test_stop_with_drain_starts_nothing_new_and_lets_running_tasks_finish() -> None:
    s = Scheduler([node(1)])
    s.handle(Submitted(0, (t(0), t(1), t(2))))
    out = s.handle(Stop(1))
    assert not any(isinstance(c, Kill) for c in out)
    assert not s.settled
    out = s.handle(Succeeded(2, 0, 1))
    assert started(out) == [] and s.settled and not s.done
    assert s.state(1) is RDY and s.stopped == "stopped by request"


def test_stop_without_drain_stops_running_tasks_and_they_become_ready_again() -> None:
    s = Scheduler([node(2)], Policy(prefetch=0))
    s.handle(Submitted(0, (t(0), t(1), t(2, 0))))
    out = s.handle(Stop(1, drain=False, reason="allocation ends"))
    kills = [c for c in out if isinstance(c, Kill)]
    assert sorted(k.task for k in kills) == [0, 1] and {k.kind for k in kills} == {"stopped"}
    out = s.handle(Failed(2, 0, 1, "killed", "cancelled"), Failed(2, 1, 1, "killed"))
    assert (0, RUN, RDY) in steps(out) and (1, RUN, RDY) in steps(out)
    assert s.state(2) is PEN, "nothing failed, so nothing downstream ended"
    assert s.settled and s.counts[FAI] == 0
    check(s)


def test_idle_means_free_cores_and_nothing_ready() -> None:
    s = Scheduler([node(2)])
    assert s.idle
    s.handle(Submitted(0, (t(0, request=Request(cpus=2)), t(1, request=Request(cpus=2)))))
    assert not s.idle  # full, and task 1 is ready
    s.handle(Succeeded(1, 0, 1))
    assert not s.idle  # task 1 took the cores
    s.handle(Succeeded(2, 1, 1))
    assert s.idle and s.done


def test_a_retry_does_not_reopen_a_task_whose_other_parent_stopped_its_children() -> None:
    """``child`` waits for ``flaky`` and ``stopper``. ``flaky`` fails first (child:
    dep_failed), then ``stopper`` succeeds with stop_children: a retry of ``flaky`` must leave
    ``child`` skipped, not run it (found by the randomized suite)."""
    from shoal.core.machine import Scheduler
    from shoal.core.resources import Node
    from shoal.core.states import State
    from shoal.core.stimuli import Failed, Retry, Submitted, Succeeded, TaskInfo

    s = Scheduler([Node.sized("n", 2, 0, 0)])
    s.handle(
        Submitted(0, (TaskInfo(0), TaskInfo(1), TaskInfo(2, deps=(0, 1)), TaskInfo(3, deps=(2,))))
    )
    s.handle(Failed(1, 0, 1, "boom"))
    assert s.state(2) is State.DEP_FAILED
    s.handle(Succeeded(2, 1, 1, skip=True))
    s.handle(Retry(3, 0))
    assert s.state(2) is State.SKIPPED
    assert s.state(3) is State.SKIPPED
    s.handle(Succeeded(4, 0, 2))
    assert s.state(2) is State.SKIPPED and s.done


def _queued_child() -> tuple[Any, int]:
    """Tasks 0..2 of one lane on one core, and task 3 that uses task 0's output: after 0
    succeeds, 1 runs and 2 and then 3 are queued behind it on the worker."""
    from shoal.core.machine import Policy, Scheduler
    from shoal.core.resources import Node
    from shoal.core.stimuli import Submitted, Succeeded, TaskInfo

    s = Scheduler([Node.sized("n", 1, 0, 0)], Policy(prefetch=4, prefetch_window=10))
    tiny = [TaskInfo(i, lane="workers") for i in range(3)]
    s.handle(Submitted(0, (*tiny, TaskInfo(3, deps=(0,), lane="workers"))))
    s.handle(Succeeded(0.001, 0, 1))
    assert s.state(3) is State.QUEUED
    return s, 3


def test_a_rerun_takes_back_a_child_queued_behind_another_task() -> None:
    """A child of the rerun task that a worker holds queued (not started) is taken back and
    waits for the new output, instead of the rerun being refused (found by the randomized
    suite, seed 20001). It costs no attempt; the backend is told to drop it, and a late
    report of that attempt changes nothing."""
    from shoal.core.commands import Kill
    from shoal.core.stimuli import Rerun, Succeeded

    s, child = _queued_child()
    out = s.handle(Rerun(0.002, 0))
    assert s.state(child) is State.PENDING
    kills = [c for c in out if isinstance(c, Kill)]
    assert [(k.task, k.attempt, k.kind) for k in kills] == [(child, 1, "stopped")]
    moves = [(c.task, c.new) for c in transitions(out)]
    assert (child, State.PENDING) in moves
    s.handle(Succeeded(0.003, 1, 1))  # the task ahead ends; the dropped one never ran
    assert s.handle(Succeeded(0.004, child, 1)) == []  # or it ran anyway: stale
    assert s.state(child) is State.PENDING
    s.handle(Succeeded(0.005, 2, 1))
    assert s.state(0) is State.RUNNING  # (it was queued behind 2) and the child waits
    assert s.state(child) is State.PENDING or s._chains.flights[child].follows == 0
    s.handle(Succeeded(0.006, 0, 2))  # the rerun's new output: the child runs again
    assert s.state(child) in (State.RUNNING, State.QUEUED)
    assert s.attempt(child) == 2 and s._table.records[child].first == 1  # no retry spent


def test_a_rerun_is_refused_while_a_queued_child_is_being_cancelled() -> None:
    from shoal.core.stimuli import Cancel, Rerun
    from shoal.errors import DefinitionError

    s, child = _queued_child()
    s.handle(Cancel(0.002, child, "not needed"))
    with pytest.raises(DefinitionError, match=r"task 3 that depends on it is queued and being"):
        s.handle(Rerun(0.003, 0))
    assert s.state(child) is State.QUEUED and s.state(0) is State.SUCCEEDED


def test_a_child_ended_by_another_failure_waits_for_the_replacement_once_retried() -> None:
    """Task 2 uses tasks 0 and 1. Task 0 fails (2 ends dep_failed), then task 1 is
    replaced by task 3 (Response): when task 0 is retried and succeeds, task 2 must still
    wait for task 3, whose output stands for task 1's (found by the randomized suite, seed
    30073: it started at once, and could not find its input)."""
    s = Scheduler([node(2)])
    s.handle(Submitted(0, (t(0), t(1), t(2, 0, 1))))
    s.handle(Failed(1, 0, 1, "boom", "error"))
    assert s.state(2) is DEP
    s.handle(Succeeded(2, 1, 1, add=(t(3),), gate=(3,), response=True))
    s.handle(Retry(3, 0))
    s.handle(Succeeded(4, 0, 2))
    assert s.state(2) is PEN, "it started before the replacement of its input ran"
    out = s.handle(Succeeded(5, 3, 1))
    assert s.state(2) in (RDY, RUN) and (2, PEN, RDY) in steps(out)
