"""Steering end to end, with real worker processes: Responses, rules and strategies on a run,
and what the store, the status file and the Run handle say about them."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Response, Workflow


@shoal.task
def converge(x: float, n: int = 0) -> Any:
    """Halve x until it is below 0.1: a loop built with replace."""
    if x < 0.1:
        return {"x": x, "steps": n}
    return Response(output={"x": x}, replace=converge(x / 2, n + 1))


@shoal.task
def plus(value: Any, k: int = 1) -> Any:
    return (value["x"] if isinstance(value, dict) else value) + k


@shoal.task
def nap(seconds: float, label: str = "") -> float:
    time.sleep(seconds)
    return time.time()


@shoal.task
def with_detour(x: int) -> Any:
    # the detour runs after this task and before its dependents; it may use this output
    return Response(output=x, detour=[nap(0.3, "detour-a"), plus(shoal.current().out, 100)])


@shoal.task
def add_work(x: int) -> Any:
    return Response(output=x, add=[plus(shoal.current().out, 1000)])


@shoal.task
def stopper(x: int) -> Any:
    return Response(output=x, stop_children=True)


@shoal.task
def halt() -> Any:
    return Response(output="halt", stop_run=True)


def db(run: shoal.Run) -> sqlite3.Connection:
    return sqlite3.connect(run.dir / "shoal.db")


def attempts(run: shoal.Run, task: int) -> tuple[float, float]:
    with db(run) as c:
        row = c.execute(
            "SELECT started, ended FROM attempts WHERE task=? ORDER BY attempt DESC", (task,)
        ).fetchone()
    return row[0], row[1]


def by_name(run: shoal.Run, name: str) -> list[int]:
    with db(run) as c:
        return [r[0] for r in c.execute("SELECT id FROM tasks WHERE name=? ORDER BY id", (name,))]


# -- responses -------------------------------------------------------------------------------------
def test_a_loop_built_with_replace_hands_its_final_output_to_the_dependents(base: Path) -> None:
    with Workflow("loop") as wf:
        c = converge(3.0)
        after = plus(c.out["x"], 1)
    run = wf.run(base=base, cpus=2)
    assert run.ok
    final = run.result(c)  # the original handle resolves to the last replacement
    assert final["steps"] == 5 and final["x"] == pytest.approx(3.0 / 32)
    assert run.result(after) == pytest.approx(1 + 3.0 / 32)
    ids = by_name(run, "converge")
    assert len(ids) == 6
    with db(run) as conn:
        origins = [r[0] for r in conn.execute("SELECT origin FROM tasks ORDER BY id")]
        aliases = dict(conn.execute("SELECT id, alias FROM tasks WHERE alias IS NOT NULL"))
    assert origins[0] == "workflow" and "response of converge (#0)" in origins
    assert len(aliases) == 5  # each step points at its replacement
    # the dependent started only after the last replacement ended
    assert attempts(run, after.id)[0] >= attempts(run, ids[-1])[1]  # type: ignore[arg-type]


@shoal.task
def hop(x: int, n: int) -> Any:
    """Count n hops up from x, each hop a replacement that reads the output of the task it
    replaces."""
    if n == 0:
        return x
    return Response(output=x + 1, replace=hop(shoal.current().out, n - 1))


@shoal.task
def two_step(x: int) -> Any:
    """Replaced by two tasks, both reading this task's own output; the last stands in."""
    me = shoal.current().out
    first = plus(me, 10)
    return Response(output=x, replace=[first, total.options(name="total")(first, me)])


@shoal.task
def total(a: int, b: int) -> int:
    return a + b


def test_a_replacement_reads_the_output_of_the_task_it_replaces(base: Path) -> None:
    """The replacement gets the replaced task's own output (Response.output); every other
    task using that output waits for the replacement and gets its output."""
    with Workflow("hops") as wf:
        h = hop(0, 3)
        after = plus(h, 100)
        t = two_step(1)
        then = plus(t, 1000)
    run = wf.run(base=base, cpus=2)
    assert run.ok, run.failures()
    assert run.result(h) == 3  # 0 -> 1 -> 2 -> 3, each hop from the output before it
    assert run.result(after) == 103
    assert run.result(t) == (1 + 10) + 1
    assert run.result(then) == 1012


def test_a_detour_finishes_before_the_dependents_start(base: Path) -> None:
    with Workflow("detour") as wf:
        d = with_detour(1)
        child = plus(d, 1)
        sibling = nap(0.0, "sibling")
    run = wf.run(base=base, cpus=2)
    assert run.ok, run.failures()
    assert run.result(child) == 2  # the dependent sees the task's own output
    nap_id = next(i for i in by_name(run, "nap") if i != sibling.id)
    plus_ids = [i for i in by_name(run, "plus") if i != child.id]
    child_start = attempts(run, child.id)[0]  # type: ignore[arg-type]
    for detour_task in (nap_id, *plus_ids):
        assert attempts(run, detour_task)[1] <= child_start
    assert run.result(plus_ids[0]) == 101  # the detour used the task's output


def test_added_work_runs_and_the_dependents_do_not_wait_for_it(base: Path) -> None:
    with Workflow("add") as wf:
        a = add_work(5)
        child = plus(a, 1)
    run = wf.run(base=base, cpus=2)
    assert run.ok
    assert run.result(child) == 6
    added = [i for i in by_name(run, "plus") if i != child.id]
    assert [run.result(i) for i in added] == [1005]


def test_stop_children_skips_dependents_and_leaves_siblings_untouched(base: Path) -> None:
    with Workflow("stop") as wf:
        s = stopper(1)
        child = plus(s, 1)
        grandchild = plus(child, 1)
        sibling = plus(2, 1)
        after_sibling = plus(sibling, 1)
    run = wf.run(base=base, cpus=2)
    assert run.ok and run.state == "succeeded"  # skipping is not failing
    assert run.result(s) == 1
    for t in (child, grandchild):
        with pytest.raises(shoal.TaskSkipped, match="stopped its children"):
            run.result(t)
    assert run.result(sibling) == 3 and run.result(after_sibling) == 4
    assert run.status()["counts"] == {"skipped": 2, "succeeded": 3}


def test_stop_run_lets_running_tasks_finish_and_ends_as_stopped(base: Path) -> None:
    with Workflow("halt") as wf:
        h = halt()
        slow = nap(0.5, "running-when-stopped")
        later = [nap(0.0, f"later-{i}") for i in range(4)]
    run = wf.run(base=base, cpus=2, prefetch=0)
    assert run.state == "stopped" and run.ok
    assert run.result(h) == "halt"
    assert isinstance(run.result(slow), float), "the running task finished"
    counts = run.status()["counts"]
    assert counts.get("succeeded") == 2 and counts.get("ready") == len(later)
    with db(run) as c:
        (reason,) = c.execute("SELECT value FROM meta WHERE key='stop_reason'").fetchone()
    assert "halt" in json.loads(reason) and "stopped the run" in json.loads(reason)


@shoal.task
def bad_cycle() -> Any:
    a = plus(1)
    b = plus(a)
    a.after(b)  # a cycle among the added tasks
    return Response(add=[a, b])


@shoal.task
def bad_size() -> Any:
    return Response(add=[plus.options(cpus=64)(1)])


@shoal.task
def bad_link() -> Any:
    from shoal.spec.refs import StoredRef

    return Response(add=[plus(StoredRef(999))])


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (bad_cycle, "dependency cycle"),
        (bad_size, "asks for 64 cores"),
        (bad_link, "task #999, which is not part of this run"),
    ],
)
def test_an_invalid_addition_fails_the_returning_task_with_a_clear_message(
    base: Path, fn: Any, message: str
) -> None:
    with Workflow("invalid") as wf:
        t = fn()
        child = plus(t, 1)
        other = plus(1, 1)
    run = wf.run(base=base, cpus=2)
    assert run.state == "failed"
    with pytest.raises(shoal.TaskFailed, match="invalid Response") as err:
        run.result(t)
    assert message in str(err.value)
    with pytest.raises(shoal.DependencyFailed):
        run.result(child)
    assert run.result(other) == 2
    with db(run) as c:
        (n,) = c.execute("SELECT COUNT(*) FROM tasks").fetchone()
    assert n == 3, "nothing of the invalid addition was stored"


# -- rules -----------------------------------------------------------------------------------------
def test_a_rule_submits_work_from_results_until_a_condition_holds(base: Path) -> None:
    with Workflow("until") as wf:
        first = plus.options(tags="walk")(0, 1)

    @wf.on("task-succeeded", tags="walk")
    def walk(event: shoal.Event, ctl: shoal.Controller) -> None:
        ctl.memory.setdefault("values", []).append(event.result)
        if event.result < 5:
            ctl.submit(plus.options(tags="walk")(event.result, 1))

    run = wf.run(base=base, cpus=2)
    assert run.ok
    assert run.result(first) == 1
    assert sorted(run.result(i) for i in by_name(run, "plus")) == [1, 2, 3, 4, 5]
    with db(run) as c:
        label, calls, errors, memory = c.execute(
            "SELECT label, calls, errors, memory FROM rules"
        ).fetchone()
    import pickle

    assert (label, calls, errors) == ("walk", 5, 0)
    assert pickle.loads(memory) == {"values": [1, 2, 3, 4, 5]}
    status = json.loads((run.dir / "status.json").read_text())
    assert status["groups"]["walk"]["counts"] == {"succeeded": 5}
    assert status["groups"]["walk"]["runtime"]["count"] == 5
    assert status["rules"][0]["rule"] == "walk" and status["rules"][0]["calls"] == 5


@shoal.task
def flaky(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_failure_rule_retries_with_twice_the_time(base: Path) -> None:
    with Workflow("retry") as wf:
        t = flaky.options(timeout=0.2, tags="md")(0.5)

    @wf.on("task-failed", tags="md")
    def more_time(event: shoal.Event, ctl: shoal.Controller) -> None:
        if event.task.attempt < 3:
            ctl.retry(event.task, timeout=0.2 * 2**event.task.attempt)

    run = wf.run(base=base, cpus=2)
    assert run.ok, run.failures()
    assert run.result(t) == 0.5
    with db(run) as c:
        rows = c.execute("SELECT attempt, kind FROM attempts WHERE task=0 ORDER BY attempt")
        kinds = [tuple(r) for r in rows]
        (options,) = c.execute("SELECT options FROM tasks WHERE id=0").fetchone()
    assert kinds == [(1, "timeout"), (2, "timeout"), (3, None)]
    assert json.loads(options)["timeout"] == 0.8


def test_a_rule_that_raises_stops_the_run_gracefully_with_a_report(base: Path) -> None:
    with Workflow("broken") as wf:
        first = nap(0.0, "first")
        rest = [nap(0.2, f"rest-{i}") for i in range(6)]

    @wf.on("task-succeeded", name="nap")
    def broken(event: shoal.Event, ctl: shoal.Controller) -> None:
        raise RuntimeError("the surrogate diverged")

    run = wf.run(base=base, cpus=2, prefetch=0)
    assert run.state == "failed" and not run.ok
    counts = run.status()["counts"]
    assert counts.get("ready", 0) > 0, "the run stopped before everything ran"
    log = (run.dir / "shoal.log").read_text()
    assert "rule 'broken' raised RuntimeError: the surrogate diverged" in log
    assert "Traceback" in log
    status = json.loads((run.dir / "status.json").read_text())
    assert status["rules"][0]["errors"] == 1
    assert "the surrogate diverged" in status["rules"][0]["last_error"]
    del first, rest


def test_metric_rule_on_a_tracked_result_field(base: Path) -> None:
    @shoal.task
    def energy(i: int) -> dict[str, float]:
        return {"energy": -1.0 * i}

    with Workflow("metric", track={"energy": "energy"}) as wf:
        for i in range(6):
            energy.options(tags="scan")(i)

    hits: list[float] = []

    @wf.on("metric", tags="scan", when="min(energy) <= -3")
    def low(event: shoal.Event, ctl: shoal.Controller) -> None:
        assert event.stats is not None
        hits.append(event.stats["energy"].min)
        ctl.cancel("scan")

    run = wf.run(base=base, cpus=1, prefetch=0)
    assert len(hits) == 1 and hits[0] <= -3
    counts = run.status()["counts"]
    assert counts.get("cancelled", 0) >= 1, counts
    status = json.loads((run.dir / "status.json").read_text())
    assert status["groups"]["scan"]["fields"]["energy"]["min"] <= -3


def test_interval_start_end_and_idle_rules_on_a_run(base: Path) -> None:
    with Workflow("timers") as wf:
        nap(0.35, "slow")
    seen: list[str] = []
    wf.on("start")(lambda e, c: seen.append("start"))
    wf.on("interval", seconds=0.1)(lambda e, c: seen.append("interval"))
    wf.on("idle")(lambda e, c: seen.append("idle"))
    wf.on("end")(lambda e, c: seen.append("end"))
    run = wf.run(base=base, cpus=2)
    assert run.ok
    assert seen[0] == "start" and seen[-1] == "end"
    assert seen.count("interval") >= 2  # every 0.1 s while the 0.35 s task ran
    assert "idle" in seen  # one core stays free while the one task runs


class Refine(shoal.Strategy):
    """Bisect for the root of x**2 - 2 in [1, 2] until the bracket is narrower than 1e-3."""

    def __init__(self) -> None:
        self.lo, self.hi = 1.0, 2.0
        self.runs = 0
        self.flying = 0

    def next(self, ctl: shoal.Controller) -> None:
        if not self.flying and not self.done(ctl):  # idle comes with a free core too
            self.flying += 1
            ctl.submit(square((self.lo + self.hi) / 2))

    def on_start(self, ctl: shoal.Controller) -> None:
        self.next(ctl)

    def on_result(self, event: shoal.Event, ctl: shoal.Controller) -> None:
        self.runs += 1
        self.flying -= 1
        x, y = event.result
        if y > 2:
            self.hi = x
        else:
            self.lo = x
        ctl.memory["bracket"] = [self.lo, self.hi]

    def on_idle(self, ctl: shoal.Controller) -> None:
        self.next(ctl)

    def done(self, ctl: shoal.Controller) -> bool:
        return self.hi - self.lo < 1e-3


@shoal.task
def square(x: float) -> tuple[float, float]:
    return x, x * x


def test_a_strategy_runs_a_campaign_in_an_otherwise_empty_workflow(base: Path) -> None:
    wf = Workflow("campaign")
    s = Refine()
    wf.add(s)
    run = wf.run(base=base, cpus=2)
    assert run.ok
    assert s.lo < 2**0.5 < s.hi and s.hi - s.lo < 1e-3
    assert s.runs == 10 and run.status()["total"] == 10
    with db(run) as c:
        (memory,) = c.execute("SELECT memory FROM rules WHERE label='Refine'").fetchone()
    import pickle

    assert pickle.loads(memory)["bracket"] == [s.lo, s.hi]


class Count(shoal.Strategy):
    """Submit ``n`` tasks of its own, one after another."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n
        self.seen: list[str] = []

    @property
    def label(self) -> str:
        return f"count-{self.name}"

    def on_start(self, ctl: shoal.Controller) -> None:
        ctl.submit(plus.options(name=self.name)(0, 1))

    def on_result(self, event: shoal.Event, ctl: shoal.Controller) -> None:
        self.seen.append(event.task.name)
        if len(self.seen) < self.n:
            ctl.submit(plus.options(name=self.name)(event.result, 1))

    def done(self, ctl: shoal.Controller) -> bool:
        return len(self.seen) >= self.n


def test_several_strategies_in_one_run_each_see_their_own_tasks(base: Path) -> None:
    a, b = Count("a", 3), Count("b", 5)
    wf = Workflow("two").add(a, b)
    run = wf.run(base=base, cpus=2, policy="adaptive")
    assert run.ok
    assert a.seen == ["a"] * 3 and b.seen == ["b"] * 5
    assert run.memory("count-a") == {} and run.status()["total"] == 8


def test_matensemble_policy_names_are_the_same_policies(base: Path) -> None:
    from shoal.core.machine import Policy

    assert Policy("adaptive").mode == "backfill"
    assert Policy("non-adaptive").mode == "waves"
    with Workflow("waves") as wf:
        ts = [nap(0.05, str(i)) for i in range(4)]
    run = wf.run(base=base, cpus=2, policy="non-adaptive")
    assert run.ok and len({run.result(t) for t in ts}) == 4
    with pytest.raises(shoal.DefinitionError, match="'adaptive'"):
        Policy("greedy")


@shoal.task
def last_word() -> Any:
    me = shoal.current().out
    return Response(output=0, replace=plus(5, 1), add=[plus(me, 2)], stop_run=True)


def test_stop_run_with_a_replacement_names_the_task_that_stopped(base: Path) -> None:
    with Workflow("last") as wf:
        w = last_word()
    run = wf.run(base=base, cpus=2)
    assert run.state == "stopped"
    with pytest.raises(shoal.StoreError, match="no result yet"):
        run.result(w)  # its replacement never started: nothing new starts after stop_run
    with db(run) as c:
        (reason,) = c.execute("SELECT value FROM meta WHERE key='stop_reason'").fetchone()
    assert json.loads(reason) == "task last_word (#0) stopped the run"
