"""Hypothesis drives the scheduler with random event sequences and checks its invariants.

The machine keeps its own model of the run, built only from the commands ``handle`` returns:
the state of every task, the attempt that runs, the cores and GPUs each attempt holds and the
kills in flight. After every step the model must agree with the scheduler, and the scheduler's
resources must add up. A last phase drains the run: every task must end in a terminal state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shoal.core import (
    Cancel,
    Command,
    Dispatch,
    Event,
    Failed,
    Kill,
    Node,
    Policy,
    Request,
    Scheduler,
    State,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    Transition,
)
from shoal.core.states import TERMINAL, TRANSITIONS
from shoal.errors import DefinitionError, ResourceError

BAD_END = frozenset({State.FAILED, State.DEP_FAILED, State.CANCELLED})

node_shapes = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 3), st.sampled_from([0, 0, 4000])),
    min_size=1,
    max_size=3,
)
policies = st.one_of(
    st.builds(Policy, st.just("backfill"), st.sampled_from([0.0, 5.0, 30.0, math.inf])),
    st.just(Policy(mode="waves")),
)


@dataclass
class Run:
    """One dispatched attempt, as the model saw it."""

    attempt: int
    start: float
    held: frozenset[tuple[str, int, int]]  # ("core" | "gpu", node, id)
    memory: tuple[tuple[int, int], ...]  # (node, MB)
    kill: str | None = None  # "cancel" or "timeout" once a Kill was sent


def transitions(out: list[Command], task: int) -> list[Transition]:
    return [c for c in out if isinstance(c, Transition) and c.task == task]


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sched: Scheduler | None = None
        self.now = 0.0
        self.next_id = 0
        self.infos: dict[int, TaskInfo] = {}
        self.states: dict[int, State] = {}
        self.attempts: dict[int, int] = {}
        self.runs: dict[int, Run] = {}
        self.held: set[tuple[str, int, int]] = set()
        self.memory: dict[int, int] = {}

    @property
    def s(self) -> Scheduler:
        assert self.sched is not None
        return self.sched

    @initialize(shapes=node_shapes, policy=policies)
    def setup(self, shapes: list[tuple[int, int, int]], policy: Policy) -> None:
        nodes = [Node.sized(f"n{i}", c, g, m) for i, (c, g, m) in enumerate(shapes)]
        self.sched = Scheduler(nodes, policy)

    # -- feeding events and checking every command ------------------------------------------
    def feed(self, *events: Event) -> list[Command]:
        out = self.s.handle(*events)
        awaiting: set[int] = set()  # RUNNING transitions whose Dispatch has not come yet
        started = False
        for c in out:
            if isinstance(c, Transition):
                self.on_transition(c, awaiting)
            elif isinstance(c, Dispatch):
                assert c.task in awaiting, f"dispatch of task {c.task} without a transition"
                if self.s.policy.mode == "waves" and not started:
                    assert not self.runs, f"waves: task {c.task} starts while {set(self.runs)} run"
                started = True
                awaiting.discard(c.task)
                self.on_dispatch(c)
            elif isinstance(c, Kill):
                self.on_kill(c)
            else:
                raise AssertionError(f"unexpected command {c}")
        assert not awaiting, f"tasks moved to running without a Dispatch: {awaiting}"
        return out

    def on_transition(self, c: Transition, awaiting: set[int]) -> None:
        assert c.time == self.s.now
        if c.old is None:
            assert c.new is State.PENDING, c
            assert c.task not in self.states, f"task {c.task} was created twice"
        else:
            assert self.states.get(c.task) is c.old, (c, self.states.get(c.task))
            assert c.new in TRANSITIONS[c.old], f"illegal transition {c}"
        if c.old is State.RUNNING:
            run = self.runs.pop(c.task)
            self.held -= run.held
            for node, mb in run.memory:
                self.memory[node] -= mb
        if c.new is State.RUNNING:
            awaiting.add(c.task)
        self.states[c.task] = c.new

    def on_dispatch(self, c: Dispatch) -> None:
        info = self.infos[c.task]
        assert self.states[c.task] is State.RUNNING
        assert c.task not in self.runs, f"task {c.task} dispatched while it already runs"
        for d in info.deps:
            assert self.states[d] is State.SUCCEEDED, f"task {c.task} starts before dep {d}"
        assert c.attempt == self.attempts.get(c.task, 0) + 1
        self.attempts[c.task] = c.attempt

        # the placement gives exactly what was asked for, on resources nobody holds
        req, nodes = info.request, self.s.pool.nodes
        slots = c.placement.slots
        assert sum(sl.ranks for sl in slots) == req.ranks
        assert len({sl.node for sl in slots}) == len(slots)
        held: set[tuple[str, int, int]] = set()
        memory = []
        for sl in slots:
            node = nodes[sl.node]
            assert sl.ranks >= 1
            assert len(sl.cores) == req.cpus * sl.ranks and len(sl.gpus) == req.gpus * sl.ranks
            assert set(sl.cores) <= set(node.cores) and set(sl.gpus) <= set(node.gpus)
            keys = {("core", sl.node, i) for i in sl.cores} | {("gpu", sl.node, i) for i in sl.gpus}
            assert len(keys) == len(sl.cores) + len(sl.gpus)
            held |= keys
            if node.memory:
                assert sl.memory == req.memory * sl.ranks
                self.memory[sl.node] = self.memory.get(sl.node, 0) + sl.memory
                assert self.memory[sl.node] <= node.memory, "memory over-committed"
                memory.append((sl.node, sl.memory))
            else:
                assert sl.memory == 0
        assert not held & self.held, f"task {c.task} placed on held resources {held & self.held}"
        self.held |= held
        self.runs[c.task] = Run(c.attempt, self.s.now, frozenset(held), tuple(memory))

    def on_kill(self, c: Kill) -> None:
        run = self.runs.get(c.task)
        assert run is not None and run.attempt == c.attempt, f"kill of a task not running: {c}"
        assert run.kill is None, f"second kill for task {c.task} attempt {c.attempt}"
        timeout = self.infos[c.task].timeout
        if "timed out" in c.reason:
            assert timeout is not None and run.start + timeout <= self.s.now, c
            run.kill = "timeout"
        else:
            run.kill = "cancel"

    def snapshot(self) -> object:
        s = self.s
        return (
            {t: e.state for t, e in s.tasks.items()},
            dict(s.counts),
            s.pool.totals(),
            [p.slots for p in s.placements()],
            len(s.queue),
            s.done,
        )

    def draw_request(self, data: st.DataObject) -> Request:
        node = data.draw(st.sampled_from(self.s.pool.nodes))
        cpus = data.draw(st.integers(1, len(node.cores)))
        gpus = data.draw(st.integers(0, len(node.gpus)))
        memory = data.draw(st.sampled_from([0, 1000, 2000])) if node.memory else 0
        ranks = data.draw(st.integers(1, 3))
        req = Request(cpus, gpus, ranks, memory)
        while ranks > 1 and self.s.refusal(req) is not None:
            ranks -= 1
            req = Request(cpus, gpus, ranks, memory)
        assert self.s.refusal(req) is None, f"{req} fits on {node} but is refused"
        return req

    # -- rules ------------------------------------------------------------------------------
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        batch = []
        for _ in range(data.draw(st.integers(1, 6), label="batch size")):
            tid = self.next_id
            self.next_id += 1
            deps = data.draw(st.lists(st.integers(0, tid - 1), max_size=3)) if tid else []
            info = TaskInfo(
                tid,
                tuple(deps),
                self.draw_request(data),
                data.draw(st.integers(-2, 2)),
                data.draw(st.none() | st.sampled_from([1.0, 5.0, 20.0])),
            )
            self.infos[tid] = info
            batch.append(info)
        out = self.feed(Submitted(self.now, tuple(batch)))
        for info in batch:
            assert transitions(out, info.id)[0].old is None

    @rule(data=st.data(), kind=st.sampled_from(["cores", "gpus", "ranks", "dep", "cancel"]))
    def reject(self, data: st.DataObject, kind: str) -> None:
        """Input the scheduler must refuse, before changing anything."""
        nodes = self.s.pool.nodes
        before = self.snapshot()
        if kind == "cancel":
            with pytest.raises(DefinitionError, match="cannot cancel"):
                self.s.handle(Cancel(self.now, self.next_id + 100))
        elif kind == "dep":
            deps = (data.draw(st.sampled_from(sorted(self.states))),) if self.states else ()
            good = TaskInfo(self.next_id, deps)
            bad = TaskInfo(self.next_id + 1, (self.next_id + 5,))
            with pytest.raises(DefinitionError, match="unknown task"):
                self.s.handle(Submitted(self.now, (good, bad)))
        else:
            if kind == "cores":
                req = Request(cpus=max(len(n.cores) for n in nodes) + 1)
            elif kind == "gpus":
                req = Request(gpus=max(len(n.gpus) for n in nodes) + 1)
            else:
                req = Request(cpus=1, ranks=sum(len(n.cores) for n in nodes) + 1)
            good = TaskInfo(self.next_id)
            bad = TaskInfo(self.next_id + 1, request=req)
            with pytest.raises(ResourceError) as info:
                self.s.handle(Submitted(self.now, (good, bad)))
            msg = str(info.value)
            biggest = max(len(n.cores) for n in nodes)
            assert req.describe() in msg and f"{biggest} cores" in msg, msg
        assert self.snapshot() == before

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data(), dt=st.sampled_from([0.0, 0.5, 2.0]))
    def succeed(self, data: st.DataObject, dt: float) -> None:
        task = data.draw(st.sampled_from(sorted(self.runs)))
        run = self.runs[task]
        self.now += dt
        out = self.feed(Succeeded(self.now, task, run.attempt))
        (end,) = transitions(out, task)
        assert (end.old, end.new) == (State.RUNNING, State.SUCCEEDED)

    @precondition(lambda self: bool(self.runs))
    @rule(
        data=st.data(),
        dt=st.sampled_from([0.0, 0.5, 2.0]),
        kind=st.sampled_from(["error", "exit", "crash", "lost"]),
    )
    def fail(self, data: st.DataObject, dt: float, kind: str) -> None:
        task = data.draw(st.sampled_from(sorted(self.runs)))
        self.fail_task(task, kind, dt)

    def fail_task(self, task: int, kind: str, dt: float = 0.0) -> None:
        run = self.runs[task]
        self.now += dt
        out = self.feed(Failed(self.now, task, run.attempt, f"{kind} in task {task}", kind))
        end = transitions(out, task)[0]
        assert end.old is State.RUNNING
        if run.kill == "cancel":
            assert end.new is State.CANCELLED
        elif run.kill == "timeout":
            assert end.new is State.FAILED and end.reason.startswith("timed out after")
        else:
            assert end.new is State.FAILED and end.reason == f"{kind} in task {task}"

    @precondition(lambda self: bool(self.states))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(sorted(self.states)))
        old = self.states[task]
        run = self.runs.get(task)
        had_kill = run is not None and run.kill is not None
        out = self.feed(Cancel(self.now, task, "stop"))
        kills = [c for c in out if isinstance(c, Kill)]
        mine = transitions(out, task)
        if old in TERMINAL:
            assert out == []
        elif old is State.RUNNING:
            assert mine == [] and self.states[task] is State.RUNNING
            assert len(kills) == (0 if had_kill else 1)
            assert all(k.task == task and k.reason == "stop" for k in kills)
        else:
            assert [(t.old, t.new, t.reason) for t in mine] == [(old, State.CANCELLED, "stop")]
            assert kills == []

    @rule(dt=st.sampled_from([0.5, 1.0, 4.0, 10.0, 30.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(Tick(self.now))
        for task, run in self.runs.items():
            timeout = self.infos[task].timeout
            if timeout is not None and run.start + timeout <= self.now:
                assert run.kill is not None, f"task {task} ran past its timeout unkilled"

    @rule(data=st.data())
    def stale(self, data: st.DataObject) -> None:
        choices: list[tuple[int, int]] = [(self.next_id + 7, 1)]  # a task nobody submitted
        choices += [(t, r.attempt + 1) for t, r in self.runs.items()]  # a later attempt
        choices += [(t, r.attempt - 1) for t, r in self.runs.items()]  # an earlier one
        choices += [(t, 1) for t in self.states if t not in self.runs]  # not running
        task, attempt = data.draw(st.sampled_from(sorted(choices)))
        ev: Event
        if data.draw(st.booleans()):
            ev = Succeeded(self.now, task, attempt)
        else:
            ev = Failed(self.now, task, attempt, "stale report")
        before = self.snapshot()
        assert self.feed(ev) == []
        assert self.snapshot() == before

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def invariants(self) -> None:
        if self.sched is not None:
            self.check()

    def check(self) -> None:
        s = self.s
        placements = s.placements()
        s.pool.check(placements)
        totals = s.pool.totals()
        assert totals["free_cores"] + sum(len(p.cores) for p in placements) == totals["cores"]
        assert totals["free_gpus"] + sum(len(p.gpus) for p in placements) == totals["gpus"]
        held = {("core", sl.node, i) for p in placements for sl in p.slots for i in sl.cores}
        held |= {("gpu", sl.node, i) for p in placements for sl in p.slots for i in sl.gpus}
        assert held == self.held

        states = {t: s.state(t) for t in s.tasks}
        assert states == self.states
        assert s.counts == {st_: sum(1 for v in states.values() if v is st_) for st_ in State}
        running = {t for t, v in states.items() if v is State.RUNNING}
        assert set(s.running) == running == set(self.runs)
        for t in states:
            assert (s.placement(t) is not None) == (t in running)
        ready = [t for t, v in states.items() if v is State.READY]
        assert len(s.queue) == len(ready)
        assert s.done == all(v in TERMINAL for v in states.values())

        for t, v in states.items():
            deps = [states[d] for d in self.infos[t].deps]
            if v in (State.READY, State.RUNNING, State.SUCCEEDED):
                assert all(d is State.SUCCEEDED for d in deps), (t, v, deps)
            if v is State.PENDING:
                assert any(d is not State.SUCCEEDED for d in deps), (t, deps)
            if v not in TERMINAL:
                assert not any(d in BAD_END for d in deps), f"{t} is {v} though a dep ended badly"
        # an idle pool always fits the most urgent ready task (refusal() said so at submission)
        assert not ready or running, f"ready tasks {ready} wait on an idle pool"
        if s.policy.mode == "backfill" and s.policy.reserve_after == math.inf:
            # pure backfill (no reservation) wastes nothing: no ready task fits what is free
            for t in ready:
                assert not self.fits_now(self.infos[t].request), f"ready task {t} fits but waits"

    def fits_now(self, req: Request) -> bool:
        """Whether ``req`` fits on what the model says is free, on one node or spread."""
        ranks = 0
        for i, node in enumerate(self.s.pool.nodes):
            cores = len(node.cores) - sum(1 for k, n, _ in self.held if k == "core" and n == i)
            gpus = len(node.gpus) - sum(1 for k, n, _ in self.held if k == "gpu" and n == i)
            fit = cores // req.cpus
            if req.gpus:
                fit = min(fit, gpus // req.gpus)
            if req.memory and node.memory:
                fit = min(fit, (node.memory - self.memory.get(i, 0)) // req.memory)
            ranks += fit
        return ranks >= req.ranks

    def teardown(self) -> None:
        if self.sched is None:
            return
        # drain: end every running attempt (succeed most, fail some) until nothing runs
        for _ in range(len(self.states) + 1):
            if not self.runs:
                break
            for task in sorted(self.runs):
                if task not in self.runs:
                    continue
                if task % 3:
                    self.feed(Succeeded(self.now, task, self.runs[task].attempt))
                else:
                    self.fail_task(task, "exit")
                self.check()
        assert not self.runs, "the drain did not end"
        assert self.s.done, {t: v for t, v in self.states.items() if v not in TERMINAL}
        assert all(v in TERMINAL for v in self.states.values())
        assert all(self.s.state(t) in TERMINAL for t in self.s.tasks)


SchedulerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestScheduler: Any = SchedulerMachine.TestCase
