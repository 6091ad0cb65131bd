"""The steering engine driven like the driver drives it, with a real scheduler, a fake clock
and no processes: triggers and filters, metrics, timers, idle, errors, strategies, the
controller and group statistics."""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

import pytest

import shoal
from shoal.core import Node, Scheduler, State, Stimulus, Submitted, Succeeded, TaskInfo
from shoal.core.commands import Kill, transitions
from shoal.core.events import Outcome
from shoal.core.stimuli import Failed, Stop
from shoal.errors import DefinitionError
from shoal.runtime.steering.controller import SLOW
from shoal.runtime.steering.engine import Steering
from shoal.spec.lower import Functions, Record, lower
from shoal.spec.steer import Strategy, make_rule, make_tracker
from shoal.spec.task import Task


@shoal.task
def work(x: float) -> dict[str, float]:
    return {"x": x}


class Host:
    """Stands in for the driver: it lowers added work and keeps the records."""

    def __init__(self, cores: int = 2) -> None:
        self.scheduler = Scheduler([Node("n0", tuple(range(cores)), ())])
        self.records: list[Record] = []
        self.log = logging.getLogger("test.steer")
        self.functions = Functions()
        self.ids: dict[int, int] = {}
        self.values: dict[int, Any] = {}

    def add_work(self, tasks: list[Task], origin: str) -> list[TaskInfo]:
        plan = lower(tasks, "test", len(self.records), self.ids, self.functions)
        for t in tasks:
            assert t.id is not None
            self.ids[t.key] = t.id
        self.records.extend(plan.records)
        return [TaskInfo(r.id, r.deps, r.options.request) for r in plan.records]

    def retry_info(self, task: int, changes: dict[str, Any]) -> TaskInfo | None:
        r = self.records[task]
        r.options = r.options.merged("retry", **changes)
        return TaskInfo(r.id, r.deps, r.options.request, timeout=r.options.timeout)

    def value(self, task: int) -> Any:
        return self.values[task]

    def task_id(self, task: Task) -> int | None:
        return self.ids.get(task.key)


class Rig:
    """A host, an engine and a clock; ``feed`` does what one driver iteration does."""

    def __init__(
        self, rules: list[Any] = (), strategies: list[Strategy] = (), cores: int = 2, **kw: Any
    ) -> None:
        self.host = Host(cores)
        self.now = 0.0
        self.st = Steering(self.host, list(rules), list(strategies), kw.get("tracked"), 0.0)
        self.transitions: list[Any] = []

    def add(self, *tasks: Task) -> list[int]:
        infos = self.host.add_work(list(tasks), "workflow")
        self.st.note_tags(self.host.records)
        self.feed(Submitted(self.now, tuple(infos)))
        return [i.id for i in infos]

    def start(self) -> None:
        self.st.start(self.now)
        self.feed()

    def feed(self, *events: Stimulus, outcomes: list[Outcome] = ()) -> None:
        commands = self.host.scheduler.handle(*events) if events else []
        by_task = {o.task: o for o in outcomes}
        for _ in range(20):
            self.transitions.extend(commands)
            self.st.observe(commands, by_task, self.now)
            self.st.idle(self.now)
            stimuli = self.st.take()
            if not stimuli:
                return
            by_task = {}
            commands = []
            for ev in stimuli:
                commands.extend(self.host.scheduler.handle(ev))

    def finish(self, task: int, value: Any = None, took: float = 1.0, ok: bool = True) -> None:
        s = self.host.scheduler
        attempt = s.attempt(task)
        self.now += took
        if ok:
            self.host.values[task] = value
            o = Outcome(task, attempt, True, self.now - took, self.now, result=pickle.dumps(value))
            self.feed(Succeeded(self.now, task, attempt), outcomes=[o])
        else:
            o = Outcome(task, attempt, False, self.now - took, self.now, "error", "ValueError: no")
            self.feed(Failed(self.now, task, attempt, "ValueError: no"), outcomes=[o])

    def state(self, task: int) -> State:
        return self.host.scheduler.state(task)


def rule(trigger: str, fn: Any, **kw: Any) -> Any:
    return make_rule(trigger, fn, **kw)


# -- task triggers and filters --
@pytest.mark.parametrize(
    ("trigger", "ok", "expected"),
    [
        ("task-started", True, ["running"]),
        ("task-succeeded", True, ["succeeded"]),
        ("task-failed", False, ["failed"]),
        ("task-finished", True, ["succeeded"]),
        ("task-finished", False, ["failed"]),
        ("task-succeeded", False, []),
        ("task-failed", True, []),
    ],
)
def test_task_triggers_fire_on_their_transition(
    trigger: str, ok: bool, expected: list[str]
) -> None:
    got: list[Any] = []
    rig = Rig([rule(trigger, lambda ev, ctl: got.append(ev))])
    (t,) = rig.add(work(1.0))
    rig.finish(t, {"x": 1.0}, took=2.0, ok=ok)
    assert [e.state for e in got] == expected
    for e in got:
        assert e.kind == trigger and e.task.id == t and e.task.name == "work"
        if e.state == "succeeded":
            assert e.result == {"x": 1.0} and e.runtime == pytest.approx(2.0) and e.error is None
        if e.state == "failed":
            assert e.result is None and "ValueError" in e.error


def test_task_cancelled_trigger() -> None:
    got: list[Any] = []
    rig = Rig([rule("task-cancelled", lambda ev, ctl: got.append(ev.task.id))], cores=1)
    _, b = rig.add(work(1.0), work(2.0))
    from shoal.core import Cancel

    rig.feed(Cancel(rig.now, b, "no longer needed"))
    assert got == [b]


def test_tags_and_name_filters() -> None:
    seen: dict[str, list[int]] = {"md": [], "relax*": [], "both": []}
    rules = [
        rule("task-succeeded", lambda ev, ctl: seen["md"].append(ev.task.id), tags="md"),
        rule("task-succeeded", lambda ev, ctl: seen["relax*"].append(ev.task.id), name="relax*"),
        rule(
            "task-succeeded",
            lambda ev, ctl: seen["both"].append(ev.task.id),
            tags=["md", "dft"],
            name="relax*",
        ),
    ]
    rig = Rig(rules, cores=4)
    ids = rig.add(
        work.options(tags="md")(1),
        work.options(name="relax-1", tags="dft")(2),
        work.options(name="relax-2")(3),
        work(4),
    )
    for t in ids:
        rig.finish(t, {"x": t})
    assert seen == {"md": [ids[0]], "relax*": [ids[1], ids[2]], "both": [ids[1]]}


# -- metric rules, timers, idle, start and end --
def test_metric_rule_fires_each_time_its_condition_becomes_true() -> None:
    fired: list[float] = []
    r = rule(
        "metric",
        lambda ev, ctl: fired.append(ev.stats.runtime.mean),
        tags="md",
        when="mean(runtime) > 3 and count(runtime) >= 2",
    )
    rig = Rig([r], cores=8)
    ids = rig.add(*[work.options(tags="md")(i) for i in range(6)])
    rig.finish(ids[0], took=5.0)  # one value: count too small
    assert fired == []
    rig.finish(ids[1], took=5.0)  # mean 5 > 3: fires once
    rig.finish(ids[2], took=5.0)  # still true: no second call
    assert fired == [5.0]
    rig.finish(ids[3], took=0.0)
    rig.finish(ids[4], took=0.0)
    rig.finish(ids[5], took=0.0)  # mean 2.5: false again
    assert fired == [5.0]
    more = rig.add(*[work.options(tags="md")(i) for i in range(4)])
    for t in more:
        rig.finish(t, took=10.0)  # back above 3: fires again
    assert len(fired) == 2 and fired[1] > 3


def test_repeat_metric_rule_sees_every_step_of_a_batch_and_fires_while_true() -> None:
    seen: list[int] = []
    r = rule(
        "metric",
        lambda ev, ctl: seen.append(ev.stats.count("succeeded")),
        tags="md",
        when=lambda g: g.count("succeeded") >= 2,
        repeat=True,
    )
    rig = Rig([r], cores=8)
    ids = rig.add(*[work.options(tags="md")(i) for i in range(4)])
    s = rig.host.scheduler
    rig.now += 1
    outs = [
        Outcome(t, s.attempt(t), True, 0.0, rig.now, result=pickle.dumps(None)) for t in ids[:3]
    ]
    # Three successes in one batch: the level rule is checked after each of them.
    rig.feed(*[Succeeded(rig.now, t, s.attempt(t)) for t in ids[:3]], outcomes=outs)
    assert seen == [2, 3]
    rig.finish(ids[3])
    assert seen == [2, 3, 4]


def test_metric_rule_with_seconds_is_checked_again_on_the_clock() -> None:
    calls: list[float] = []
    r = rule(
        "metric",
        lambda ev, ctl: calls.append(ev.time),
        tags="md",
        when="succeeded >= 1",
        seconds=10,
        repeat=True,
    )
    rig = Rig([r], cores=2)
    (a,) = rig.add(work.options(tags="md")(1))
    rig.finish(a)
    assert len(calls) == 1
    for now in (5.0, 11.0, 15.0, 22.0):
        rig.st.tick(now)
    assert calls[1:] == [11.0, 22.0]


def test_metric_rule_with_a_callable_and_a_tracked_field() -> None:
    hits: list[Any] = []
    r = rule("metric", lambda ev, ctl: hits.append(ev.group), when=lambda g: g["x"].max > 2)
    rig = Rig([r], cores=4, tracked={"x": make_tracker("x", "x")})
    ids = rig.add(work(1), work(2), work(3))
    rig.finish(ids[0], {"x": 1.0})
    rig.finish(ids[1], {"x": 2.0})
    assert hits == []
    rig.finish(ids[2], {"x": 3.0})
    assert hits == ["*"]
    g = rig.st.group(None)
    assert g["x"].count == 3 and g["x"].mean == pytest.approx(2.0)


def test_interval_rule_follows_the_clock() -> None:
    times: list[float] = []
    rig = Rig([rule("interval", lambda ev, ctl: times.append(ev.time), seconds=10)])
    for now in (5.0, 10.0, 12.0, 19.9, 20.0, 35.0):
        rig.st.tick(now)
    assert times == [10.0, 20.0, 35.0]


def test_idle_fires_when_cores_are_free_and_nothing_is_ready() -> None:
    calls: list[float] = []
    rig = Rig([rule("idle", lambda ev, ctl: calls.append(ev.time))], cores=2)
    a, b, c = rig.add(work(1), work(2), work(3))  # two run, one waits
    assert calls == []
    rig.finish(a)  # c takes the free core: not idle
    assert calls == []
    rig.finish(b)  # one core free, nothing ready
    assert len(calls) == 1
    rig.finish(c)  # still idle, and a task ended: called again
    assert len(calls) == 2


def test_start_and_end_rules_and_submitting_at_the_end_is_refused() -> None:
    log: list[str] = []

    def at_end(ev: Any, ctl: Any) -> None:
        log.append("end")
        ctl.submit(work(9))

    rules = [
        rule("start", lambda ev, ctl: (log.append("start"), ctl.submit(work(1)))),
        rule("end", at_end, on_error="log"),
    ]
    rig = Rig(rules)
    rig.start()
    assert log == ["start"] and len(rig.host.records) == 1
    assert rig.state(0) is State.RUNNING
    rig.finish(0)
    rig.st.end(rig.now)
    assert log == ["start", "end"]
    owner = next(o for o in rig.st.owners if o.trigger == "end")
    assert owner.errors == 1 and "the run is ending" in owner.last_error


# -- errors and timing --
def test_a_rule_that_raises_stops_the_run_gracefully_and_is_recorded() -> None:
    def broken(ev: Any, ctl: Any) -> None:
        raise ZeroDivisionError("division by zero")

    rig = Rig([rule("task-succeeded", broken)], cores=1)
    a, b, c = rig.add(work(1), work(2), work(3))
    rig.finish(a)  # b starts as a ends (the core decides before handlers run); then it raises
    assert rig.st.error == "rule 'broken' raised ZeroDivisionError: division by zero"
    assert "broken" in rig.host.scheduler.stopped
    rig.finish(b)  # b finishes: running tasks drain ...
    assert rig.state(b) is State.SUCCEEDED
    assert rig.state(c) is State.READY, "... and nothing new starts"
    assert rig.host.scheduler.settled
    (row,) = [r for r in rig.st.rows(every=True) if r[0] == "broken"]
    assert row[2:4] == (1, 1) and "ZeroDivisionError" in row[6]


def test_on_error_log_keeps_the_run_going() -> None:
    def broken(ev: Any, ctl: Any) -> None:
        raise KeyError("energy")

    rig = Rig([rule("task-succeeded", broken, on_error="log")], cores=1)
    a, b = rig.add(work(1), work(2))
    rig.finish(a)
    assert rig.st.error is None and not rig.host.scheduler.stopped
    assert rig.state(b) is State.RUNNING


def test_slow_handlers_are_timed_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig([rule("task-succeeded", lambda ev, ctl: time.sleep(SLOW * 1.5))], cores=1)
    (a,) = rig.add(work(1))
    with caplog.at_level(logging.WARNING, logger="test.steer"):
        rig.finish(a)
    summary = rig.st.summary()["rules"][0]
    assert summary["slow"] and summary["slowest"] >= SLOW
    assert "took" in caplog.text and "move heavy work into a task" in caplog.text


# -- the controller --
def test_a_rule_submits_work_from_results_until_a_condition_holds() -> None:
    def more(ev: Any, ctl: Any) -> None:
        x = ev.result["x"]
        ctl.memory.setdefault("seen", []).append(x)
        if x < 5:
            ctl.submit(work(x + 1))

    rig = Rig([rule("task-succeeded", more)])
    rig.add(work(0))
    while not rig.host.scheduler.done:
        running = rig.host.scheduler.running()
        r = rig.host.records[running[0]]
        x = pickle.loads(r.payload)[0][0]
        rig.finish(running[0], {"x": x})
    owner = rig.st.owners[0]
    assert owner.memory["seen"] == [0, 1, 2, 3, 4, 5]
    assert len(rig.host.records) == 6
    (row,) = rig.st.rows(every=True)
    assert pickle.loads(row[7]) == {"seen": [0, 1, 2, 3, 4, 5]}


def test_retry_with_more_time_from_a_failure_rule() -> None:
    def again(ev: Any, ctl: Any) -> None:
        if ev.task.attempt < 3:
            ctl.retry(ev.task, timeout=100.0 * ev.task.attempt)

    rig = Rig([rule("task-failed", again)], cores=1)
    (t,) = rig.add(work(1))
    rig.finish(t, ok=False)
    assert rig.state(t) is State.RUNNING and rig.host.scheduler.attempt(t) == 2
    assert rig.host.records[t].options.timeout == 100.0
    assert rig.host.scheduler.info(t).timeout == 100.0
    rig.finish(t, ok=False)
    rig.finish(t, ok=False)
    assert rig.state(t) is State.FAILED and rig.host.scheduler.attempt(t) == 3
    retries = [c for c in transitions(rig.transitions) if c.old is State.FAILED]
    assert len(retries) == 2 and all(c.cause == "retry(task 0)" for c in retries)


def test_controller_refuses_bad_requests_with_clear_errors() -> None:
    errors: list[str] = []

    def wrong(ev: Any, ctl: Any) -> None:
        for call in (
            lambda: ctl.retry(ev.task),  # it succeeded
            lambda: ctl.retry(99),
            lambda: ctl.submit(ev),  # not a task
            lambda: ctl.cancel(3.5),
        ):
            try:
                call()
            except DefinitionError as err:
                errors.append(str(err))

    rig = Rig([rule("task-succeeded", wrong)])
    (t,) = rig.add(work(1))
    rig.finish(t)
    assert len(errors) == 4
    assert "only failed or cancelled tasks can be retried" in errors[0]
    assert "there is no task #99" in errors[1]
    assert "takes tasks or workflows" in errors[2]
    assert "give a task handle" in errors[3]


def test_cancel_by_tag_and_stop() -> None:
    def on_first(ev: Any, ctl: Any) -> None:
        assert ctl.cancel("slow") == 2
        ctl.stop()

    rig = Rig([rule("task-succeeded", on_first)], cores=1)
    a, b, c, d = rig.add(
        work(1), work.options(tags="slow")(2), work.options(tags="slow")(3), work(4)
    )
    rig.finish(a)
    # b started as a ended: it is asked to stop; c had not started: cancelled at once
    kills = [k for k in rig.transitions if isinstance(k, Kill)]
    assert [(k.task, k.kind) for k in kills] == [(b, "cancelled")]
    assert rig.state(c) is State.CANCELLED
    rig.now += 1
    rig.feed(Failed(rig.now, b, 1, "killed", "cancelled"))
    assert rig.state(b) is State.CANCELLED
    assert rig.state(d) is State.READY and rig.host.scheduler.stopped
    assert rig.st.error is None
    res = rig.st.summary()
    assert res["groups"]["slow"]["counts"] == {"cancelled": 2}


def test_resources_and_stats_from_the_controller() -> None:
    seen: list[Any] = []
    rig = Rig(
        [rule("task-started", lambda ev, ctl: seen.append((ctl.resources(), ctl.stats("md"))))],
        cores=3,
    )
    rig.add(work.options(tags="md")(1))
    res, g = seen[0]
    assert res == {"cores": 3, "gpus": 0, "free_cores": 2, "free_gpus": 0}
    assert g.count("running") == 1 and g.total == 1


# -- strategies --
class Doubling(Strategy):
    """Submit one task, then two per result, until eight results came in."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.idles = 0

    def on_start(self, ctl: Any) -> None:
        ctl.submit(work(0))

    def on_result(self, event: Any, ctl: Any) -> None:
        self.results.append(event.result)
        if len(self.results) < 5:
            ctl.submit(work(len(self.results)), work(len(self.results) + 100))

    def on_idle(self, ctl: Any) -> None:
        self.idles += 1

    def done(self, ctl: Any) -> bool:
        return len(self.results) >= 8


def test_a_strategy_starts_reacts_to_its_own_results_and_finishes() -> None:
    s = Doubling()
    other: list[Any] = []
    rig = Rig([rule("task-succeeded", lambda ev, ctl: other.append(ev.task.id))], [s], cores=2)
    rig.add(work.options(name="not-mine")(-1))  # not submitted by the strategy
    rig.start()
    while rig.host.scheduler.running():
        t = min(rig.host.scheduler.running())
        rig.finish(t, {"x": t})
    assert 0 in other, "the task of the workflow ran"
    assert 0 not in [r["x"] for r in s.results], "a strategy sees only its own tasks"
    assert rig.st.strategies[0].done
    assert s.idles >= 1
    assert rig.host.scheduler.done
    assert len(rig.host.records) == 1 + 1 + 8  # one of the workflow, 1 + 2 * 4 of its own
    assert len(s.results) == 9, "results of tasks in flight when it was done still arrive"
    idles = s.idles
    rig.add(work(5))  # done: nothing of the workflow reaches it, and no more on_idle
    rig.finish(len(rig.host.records) - 1, {"x": 5})
    assert len(s.results) == 9 and s.idles == idles


def test_a_strategy_with_tags_sees_tagged_tasks_of_the_workflow() -> None:
    class Watch(Strategy):
        tags = ("md",)

        def __init__(self) -> None:
            self.names: list[str] = []

        def on_result(self, event: Any, ctl: Any) -> None:
            self.names.append(event.task.name)

    w = Watch()
    rig = Rig([], [w], cores=2)
    a, b = rig.add(work.options(name="m", tags="md")(1), work.options(name="o")(2))
    rig.finish(a)
    rig.finish(b)
    assert w.names == ["m"]


# -- group statistics --
def test_groups_count_states_and_keep_runtime_and_wait_statistics() -> None:
    rig = Rig(cores=1)
    ids = rig.add(*[work.options(tags=["md", "cu"])(i) for i in range(3)])
    for t in ids:
        rig.finish(t, took=2.0)
    for tag in ("md", "cu"):
        g = rig.st.group(tag)
        assert {k: v for k, v in g.counts.items() if v} == {"succeeded": 3}
        assert g.runtime.count == 3 and g.runtime.mean == pytest.approx(2.0)
        # one core: the second waited 2 s, the third 4 s
        assert g.wait.count == 3 and g.wait.max == pytest.approx(4.0)
    with pytest.raises(DefinitionError, match="ask for a tag"):
        rig.st.group(None)


def test_stop_from_the_engine_is_a_core_stop() -> None:
    rig = Rig(cores=1)
    rig.st.stop("enough", drain=False)
    (ev,) = rig.st.take()
    assert isinstance(ev, Stop) and not ev.drain and ev.reason == "enough"
