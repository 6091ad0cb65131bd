"""Validation mode: every invariant of the scheduler's state, checked after every ``handle()``.

Off by default, so it costs nothing in a real run (one attribute test per ``handle()`` call).
On with ``Scheduler(..., validate=True)`` or ``SHOAL_VALIDATE=1`` in the environment; the test
suite sets the variable (tests/conftest.py), so every scheduler in every test, the drivers of
real runs in subprocesses included, checks itself after each step. A check costs time linear in
the tasks and dependencies of the run.

A broken invariant raises :class:`Invalid` (a bug in shoal, never a user error) naming the
invariant and the task. What is checked:

* resources: per node, the placements of the chains and the free cores, GPUs and memory add up
  to the node's capacity, without overlap (``Pool.check``);
* counts: ``counts[state]`` is the number of tasks in that state; ``open`` the number of
  tasks not in a terminal state;
* in flight: exactly the queued and running tasks have a flight (core/chains.py);
  ``Chains.running`` holds exactly the running tasks; each has a placement and heads its
  chain, with that chain's placement;
* queued: each queued task sits in a chain behind a running head, of its shape and lane, with
  the chain's placement held by that head; every chain's tasks point back at it;
* open chains (prefetch) are live chains with a lane, filed under their own shape and key;
* ready: the ready queue holds exactly the ready tasks, each with its current generation;
* dependencies: ``waiting`` is the number of tasks a non-terminal task waits for that have not
  succeeded; a pending task waits for some, a ready, running or retrying task for none, a
  queued one for none or (a follower) exactly the task right ahead of it; no task that is not
  finished waits for a task that ended without success; every dependency lists its dependent
  among its children;
* followers: ``follows`` is set only on queued tasks, names a task they wait for, and that task
  is right ahead of them in the chain; a follower needs ``Policy.follow``;
* retries: every retrying task has its due entry in the back-off heap;
* attempts: never negative, at least ``first``, at least 1 in flight, and never lower than at
  the last check (a task given back unstarted keeps its attempt number, and raises ``first``
  instead: it costs no retry).
"""

from __future__ import annotations

import os

from shoal.core.chains import Chain, Chains
from shoal.core.states import TERMINAL, State
from shoal.core.tasks import PENDING, QUEUED, READY, RETRYING, RUNNING, TaskTable

ENV = "SHOAL_VALIDATE"


class Invalid(AssertionError):
    """An invariant of the scheduler's state does not hold (a bug in shoal)."""


def enabled() -> bool:
    """Whether ``SHOAL_VALIDATE`` asks for validation (1, true, yes, on)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _fail(what: str) -> None:
    raise Invalid(f"scheduler invariant broken: {what}")


def check(
    table: TaskTable,
    chains: Chains,
    retries: list[tuple[float, int, int]],
    seen: dict[int, tuple[int, State]],
) -> None:
    """Raise :class:`Invalid` if any invariant (see the module doc) does not hold."""
    tasks = table.records
    counts = {st: 0 for st in State}
    found: dict[int, Chain] = {}
    edges = {(p, c) for p, e in tasks.items() for c in e.children or ()}
    for tid, e in tasks.items():
        if e.info.id != tid:
            _fail(f"task {tid} is filed under another id ({e.info.id})")
        counts[e.state] += 1
        if e.attempt < 0 or e.first < 0 or e.first > e.attempt:
            _fail(f"task {tid}: attempt {e.attempt}, first {e.first}")
        _check_flight(table, chains, tid, found)
        if e.state not in TERMINAL:
            _check_waits(table, tid, edges)
    for st, n in counts.items():
        if table.counts[st] != n:
            _fail(f"counts[{st.value}] is {table.counts[st]} but {n} tasks are {st.value}")
    open_ = sum(n for st, n in counts.items() if st not in TERMINAL)
    if table.open != open_:
        _fail(f"open is {table.open} but {open_} tasks are not finished")
    if len(chains.running) != counts[RUNNING]:
        _fail(f"Chains.running has {len(chains.running)} tasks, {counts[RUNNING]} are running")
    if len(chains.flights) != counts[RUNNING] + counts[QUEUED]:
        _fail(f"{len(chains.flights)} flights, but {counts[RUNNING] + counts[QUEUED]} in flight")
    _check_chains(table, chains, found)
    _check_ready(table, counts[READY])
    _check_retries(table, retries)
    _check_attempts(table, seen)


def _check_flight(table: TaskTable, chains: Chains, tid: int, found: dict[int, Chain]) -> None:
    e = table.records[tid]
    state = e.state
    f = chains.flights.get(tid)
    if state is RUNNING:
        if f is None or f.placement is None:
            _fail(f"running task {tid} has no flight or no placement")
            return
        chain = f.chain
        if chain.tasks[0] != tid:
            _fail(f"running task {tid} is not the head of its chain {list(chain.tasks)}")
        if f.placement != chain.placement:
            _fail(f"running task {tid} holds another placement than its chain's")
        if chains.running.get(tid) is not e:
            _fail(f"running task {tid} is missing from Chains.running")
        if e.attempt < 1:
            _fail(f"running task {tid} has attempt {e.attempt}")
        if f.since > table.now:
            _fail(f"running task {tid} started after now")
        found[chain.key] = chain
    elif state is QUEUED:
        if f is None:
            _fail(f"queued task {tid} is in no chain")
            return
        chain = f.chain
        if f.placement is not None:
            _fail(f"queued task {tid} holds a placement")
        if tid not in chain.tasks or chain.tasks[0] == tid:
            _fail(f"queued task {tid} is not behind the head of its chain {list(chain.tasks)}")
        if table.records[chain.tasks[0]].state is not RUNNING:
            _fail(f"queued task {tid} waits in a chain whose head is not running")
        if e.info.request != chain.request or e.info.lane != chain.lane or not chain.lane:
            _fail(f"queued task {tid} is not of its chain's shape and lane")
        if e.attempt < 1:
            _fail(f"queued task {tid} has attempt {e.attempt}")
    else:
        if f is not None:
            _fail(f"task {tid} is {state.value} but has a flight")
        if tid in chains.running:
            _fail(f"task {tid} is {state.value} but listed in Chains.running")
    if f is not None and f.follows is not None:
        _check_follower(table, chains, tid)
    elif state is QUEUED and e.waiting:
        _fail(f"queued task {tid} waits for {e.waiting} task(s) but follows none")


def _check_follower(table: TaskTable, chains: Chains, tid: int) -> None:
    e = table.records[tid]
    f = chains.flights[tid]
    if e.state is not QUEUED:
        _fail(f"task {tid} follows task {f.follows} but is {e.state.value}")
    if not chains.policy.follow or not e.info.follow:
        _fail(f"task {tid} follows task {f.follows} though following is off")
    waits = [d for d in e.waits_for() if not table.met(e, table.records[d])]
    if waits != [f.follows]:
        _fail(f"follower {tid} of task {f.follows} waits for {waits}")
    order = list(f.chain.tasks)
    i = order.index(tid)
    if order[i - 1] != f.follows:
        _fail(f"follower {tid} is not right behind task {f.follows} in its chain {order}")
    if e.waiting != 1:
        _fail(f"follower {tid} has waiting {e.waiting}, not 1")


def _check_waits(table: TaskTable, tid: int, edges: set[tuple[int, int]]) -> None:
    e = table.records[tid]
    waits = 0
    for d in e.waits_for():
        dep = table.records.get(d)
        if dep is None:
            _fail(f"task {tid} waits for unknown task {d}")
            return
        if (d, tid) not in edges:
            _fail(f"task {tid} waits for task {d}, which does not list it as a child")
        if not table.met(e, dep):
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


def _check_chains(table: TaskTable, chains: Chains, found: dict[int, Chain]) -> None:
    for chain in found.values():
        for i, t in enumerate(chain.tasks):
            f = chains.flights.get(t)
            if f is None or f.chain is not chain:
                _fail(f"task {t} is listed in chain {chain.key} but points elsewhere")
            want = RUNNING if i == 0 else QUEUED
            if table.records[t].state is not want:
                _fail(
                    f"task {t} at place {i} of chain {chain.key} is {table.records[t].state.value}"
                )
    try:
        chains.pool.check([chain.placement for chain in found.values()])
    except AssertionError as err:
        _fail(f"resources: {err}")
    for request, open_ in chains.open.items():
        for key, chain in open_.items():
            if chain.key != key or chain.request != request:
                _fail(f"open chain {key} is filed under another key or shape")
            if found.get(key) is not chain:
                _fail(f"open chain {key} has no running head")
            if not chain.lane:
                _fail(f"open chain {key} has no lane")


def _check_ready(table: TaskTable, ready: int) -> None:
    q = table.heap
    if len(q) != ready:
        _fail(f"the ready queue counts {len(q)} tasks, {ready} tasks are ready")
    items = {(item[1], item[2]) for _, item in q.items()}
    live = sum(1 for _, item in q.items() if q.live(item))
    if live != ready:
        _fail(f"the ready queue holds {live} live items, {ready} tasks are ready")
    for tid, e in table.records.items():
        if e.state is not READY:
            continue
        if (tid, e.generation) not in items:
            _fail(f"ready task {tid} is not in its shape's heap with its generation")
        if e.ready_since > table.now:
            _fail(f"ready task {tid} became ready after now")


def _check_retries(table: TaskTable, retries: list[tuple[float, int, int]]) -> None:
    due = {(task, attempt) for _, task, attempt in retries}
    for tid, e in table.records.items():
        if e.state is RETRYING and (tid, e.attempt) not in due:
            _fail(f"retrying task {tid} attempt {e.attempt} has no due time")


def _check_attempts(table: TaskTable, seen: dict[int, tuple[int, State]]) -> None:
    """Attempt numbers never go down: each is handed out once."""
    for tid, e in table.records.items():
        old = seen.get(tid)
        if old is not None and e.attempt < old[0]:
            _fail(f"task {tid}'s attempt went down from {old[0]} to {e.attempt}")
        seen[tid] = (e.attempt, e.state)
