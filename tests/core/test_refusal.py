"""Refused events change nothing (issue 14), and validation mode finds a broken state.

Each event is checked before it changes anything; a refused one raises ``Refused`` carrying
the event, its task and attempt, and the commands of the events before it in the same call,
which keep their effect. Twin schedulers show it: one fed ``(good, bad, later)``, the other
``(good,)`` only, end in the same state with the same commands.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shoal.core import (
    Cancel,
    Command,
    Failed,
    Node,
    Policy,
    Scheduler,
    State,
    Stimulus,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    transitions,
)
from shoal.core.refusals import (
    Refused,
    RefusedReport,
    RefusedRequest,
    RefusedResource,
    UnknownEvent,
)
from shoal.core.resources import Request
from shoal.core.states import IllegalTransition
from shoal.core.stimuli import Restored, Retry
from shoal.core.validate import Invalid, enabled
from shoal.errors import DefinitionError, ResourceError

from .snapshot import deep

QUE, PEN, RUN = State.QUEUED, State.PENDING, State.RUNNING
FOLLOW = Policy(prefetch=3, prefetch_window=10.0, follow=True)


def task(id: int, *deps: int, **kw: object) -> TaskInfo:
    kw.setdefault("lane", "workers")
    return TaskInfo(id, tuple(deps), **kw)  # type: ignore[arg-type]


def steps(commands: Sequence[Command]) -> list[tuple[int, State | None, State]]:
    return [(c.task, c.old, c.new) for c in transitions(commands)]


def queued_with_a_follower() -> Scheduler:
    """One core: task 1 runs, 2 is queued behind it and 3 (which needs 2) follows 2."""
    s = Scheduler([Node.sized("n0", 1)], FOLLOW, validate=True)
    s.handle(Submitted(0, (task(0),)))
    s.handle(Succeeded(1, 0, 1))  # one 1 s run: the shape is short, prefetch starts
    s.handle(Submitted(2, (task(1), task(2), task(3, 2, follow=True))))
    assert [s.state(t) for t in (1, 2, 3)] == [RUN, QUE, QUE]
    assert s._chains.flights[3].follows == 2
    return s


def test_a_failure_reported_for_a_queued_task_is_refused_and_changes_nothing() -> None:
    """It used to take the follower of the queued task back (queued -> pending) and then
    raise: the state no longer matched what the store was told."""
    s = queued_with_a_follower()
    before = deep(s)
    bad = Failed(3, 2, 1, "ran too early", "error")
    with pytest.raises(RefusedReport, match="task 2 attempt 1 failed while it was queued") as err:
        s.handle(bad)
    assert deep(s) == before
    assert (err.value.event, err.value.task, err.value.attempt) == (bad, 2, 1)
    assert err.value.commands == []
    assert isinstance(err.value, IllegalTransition)  # a bug elsewhere, never a user error


def test_a_success_reported_for_a_queued_task_is_refused_and_changes_nothing() -> None:
    s = queued_with_a_follower()
    before = deep(s)
    with pytest.raises(RefusedReport, match="task 3 attempt 1 succeeded while it was queued"):
        s.handle(Succeeded(4, 3, 1))
    assert deep(s) == before  # not even the clock moved


def test_earlier_events_of_the_call_keep_their_effect_and_commands() -> None:
    """handle(good, bad, later) == handle(good), then the refusal; later is not looked at."""
    a, b = queued_with_a_follower(), queued_with_a_follower()
    good: list[Stimulus] = [Submitted(3, (task(4), task(5, 4))), Cancel(3, 5)]
    bad = Failed(4, 2, 1, "ran too early", "error")
    later = Succeeded(5, 1, 1)
    with pytest.raises(RefusedReport) as err:
        a.handle(*good, bad, later)
    expected = b.handle(*good)
    assert steps(err.value.commands) == steps(expected) != []
    assert (4, None, State.READY) in steps(expected)
    assert (5, PEN, State.CANCELLED) in steps(expected)
    assert deep(a) == deep(b)
    assert a.state(1) is RUN  # ``later`` was not applied


def test_a_refused_request_in_a_batch_keeps_the_earlier_commands() -> None:
    s = Scheduler([Node.sized("n0", 2)], validate=True)
    with pytest.raises(RefusedRequest, match="cannot cancel task 9") as err:
        s.handle(Submitted(0, (task(0), task(1, 0))), Cancel(1, 9), Tick(2))
    assert isinstance(err.value, DefinitionError)  # callers that catch it still do
    assert (err.value.task, err.value.attempt) == (9, None)
    assert steps(err.value.commands) == [
        (0, None, State.READY),
        (1, None, PEN),
        (0, State.READY, RUN),
    ]
    assert s.now == 0  # the refused event's time did not count either
    assert s.state(0) is RUN


def test_a_request_no_node_can_hold_is_refused_as_a_resource_error() -> None:
    s = Scheduler([Node.sized("n0", 2)], validate=True)
    s.handle(Submitted(0, (task(0),)))
    before = deep(s)
    with pytest.raises(RefusedResource, match="can never start") as err:
        s.handle(Submitted(1, (task(1, request=Request(cpus=3)),)))
    assert isinstance(err.value, ResourceError)
    assert deep(s) == before


def test_a_response_with_invalid_work_is_refused_before_its_followers_are_taken_back() -> None:
    """The added work used to be checked after the followers were taken back."""
    s = queued_with_a_follower()
    s.handle(Succeeded(3, 1, 1))  # 2 runs now, 3 still follows it
    assert (s.state(2), s.state(3)) == (RUN, QUE)
    before = deep(s)
    bad = Succeeded(4, 2, 1, add=(task(9, 77),), response=True)
    with pytest.raises(RefusedRequest, match="unknown task 77"):
        s.handle(bad)
    assert deep(s) == before


def test_a_restore_with_gates_of_unknown_tasks_is_refused_whole() -> None:
    s = Scheduler([Node.sized("n0", 2)], validate=True)
    before = deep(s)
    ev = Restored(0, (task(0), task(1, 0)), (State.SUCCEEDED, PEN), (1, 0), ((1, (42,)),))
    with pytest.raises(RefusedRequest, match="gates of task 1"):
        s.handle(ev)
    assert deep(s) == before


def test_retry_of_a_task_that_has_not_failed_is_refused() -> None:
    s = Scheduler([Node.sized("n0", 2)], validate=True)
    s.handle(Submitted(0, (task(0),)))
    before = deep(s)
    with pytest.raises(RefusedRequest, match="only failed or cancelled"):
        s.handle(Tick(1), Retry(2, 0))
    assert deep(s) != before  # the Tick moved the clock ...
    assert s.now == 1  # ... and nothing else: the retry did not


def test_an_unknown_event_is_refused() -> None:
    s = Scheduler([Node.sized("n0", 1)], validate=True)
    with pytest.raises(UnknownEvent, match="does not handle"):
        s.handle(Stimulus(0.0))
    assert isinstance(UnknownEvent("x"), TypeError)


def test_refusals_pickle_as_their_type() -> None:
    import pickle

    for cls in (RefusedReport, RefusedRequest, RefusedResource, Refused):
        again = pickle.loads(pickle.dumps(cls("why")))
        assert type(again) is cls and str(again) == "why"


# -- validation mode ---------------------------------------------------------------------------
def test_validation_is_on_in_tests_and_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert enabled(), "tests/conftest.py sets SHOAL_VALIDATE=1"
    assert Scheduler([Node.sized("n0", 1)]).validating
    monkeypatch.setenv("SHOAL_VALIDATE", "0")
    assert not Scheduler([Node.sized("n0", 1)]).validating
    assert Scheduler([Node.sized("n0", 1)], validate=True).validating
    monkeypatch.setenv("SHOAL_VALIDATE", "1")
    assert not Scheduler([Node.sized("n0", 1)], validate=False).validating


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda s: s._table.counts.__setitem__(QUE, 5), "counts"),
        (lambda s: setattr(s._table, "open", 0), "open"),
        (lambda s: s._chains.running.pop(1), "missing from Chains.running"),
        (lambda s: setattr(s._chains.flights[3], "follows", None), "follows none"),
        (lambda s: s._chains.flights.pop(3), "in no chain"),
        (lambda s: setattr(s._table.records[2], "attempt", 0), "attempt"),
        (lambda s: s.pool.free[0].__setattr__("ncores", 1), "resources: free core or GPU counts"),
        (lambda s: s._chains.flights[2].chain.tasks.rotate(1), "head|place"),
        (lambda s: s._table.heap.push(3, Request(), 0, 1), "ready queue"),
        (lambda s: setattr(s._table.records[3], "waiting", 0), "waiting"),
    ],
)
def test_validation_finds_a_broken_state(corrupt: object, message: str) -> None:
    s = queued_with_a_follower()
    s.validate()
    corrupt(s)  # type: ignore[operator]
    with pytest.raises((Invalid, AssertionError), match=message):
        s.validate()
    with pytest.raises((Invalid, AssertionError)):
        s.handle(Tick(10))  # validation mode checks after every call


def test_attempts_never_go_down() -> None:
    s = queued_with_a_follower()
    s._table.records[1].attempt = 5
    s.validate()
    s._table.records[1].attempt = 4
    with pytest.raises(Invalid, match="went down from 5 to 4"):
        s.validate()
