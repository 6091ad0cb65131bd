"""Attempts in flight and the chains they run in: prefetch and followers.

A :class:`Chain` is one placement and the tasks that use it in turn: ``tasks[0]`` runs, the
rest are queued behind it on the backend (a worker, a process chain) and start there, one after
another, without a round trip through the driver. A :class:`Flight` is what an attempt holds
while it is queued or running: its chain, its placement once it runs, when it started, a kill on
the way, and for a follower the task ahead of it that it waits for. :class:`Chains` owns both,
the ready-made chains that accept more work (``open``), the moving average of run time per
shape that decides how deep to queue, and the timeouts of running attempts.

Rules of this module:

1. A task has a :class:`Flight` exactly while it is queued or running; nothing else does.
2. A task's state changes only through :meth:`TaskTable.move <shoal.core.tasks.TaskTable.move>`;
   this module decides *when*, from what happens to chains.

Prefetch (``Policy.prefetch`` > 0, backfill only): a round trip through the driver costs a
fraction of a millisecond, which is most of the time of a tiny task. So ready tasks of a shape
are queued behind each running task of that shape on its chain, as many as fit in
``prefetch_window`` seconds of expected work (a moving average of the shape's run time), at
most ``prefetch``. Only tasks with a lane (``TaskInfo.lane``: the backend queue that can hold
them) are queued, and only behind a running task of the same lane. They are ``queued``: handed
to the backend but holding no resources. When the running task ends, the next one takes over
its placement at once (``queued -> running``); when the chain is lost, the backend returns them
(``Returned``) and they are ready again. Longer tasks are never prefetched, so a chain stuck
behind a slow task cannot idle other cores.

Followers (``Policy.follow``, with prefetch): a chain of dependent tiny tasks would otherwise
pay a round trip per link, since a child becomes ready only when the driver has seen its parent
succeed. So a pending task that waits for nothing but the last task of a chain (and may follow,
``TaskInfo.follow``) is queued behind it at once (``pending -> queued``), within the same
depth, if no ready task of that shape is more urgent. The backend starts it only if that task
succeeds there without a Response, with its output at hand. One step only: a follower gets no
follower of its own until it runs, so that many chains advance side by side rather than one
chain far ahead. (Whole chains queued ahead were measured slower: the tasks in flight then lie
far apart in the store, and each commit writes several times the pages.) When the task ahead
does not succeed (or returns a Response, which may change what its dependents wait for), the
core takes its followers back (``queued -> pending``) and the backend drops them; they then
wait as any pending task does.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from shoal.core.commands import Command, Dispatch, Kill
from shoal.core.policy import Policy
from shoal.core.resources import Placement, Pool, Request
from shoal.core.tasks import CANCELLED, PENDING, QUEUED, RUNNING, TaskRecord, TaskTable
from shoal.spec.kinds import KillKind, Lane


class Chain:
    """A placement and the tasks using it in turn: ``tasks[0]`` runs, the rest are queued."""

    __slots__ = ("key", "lane", "looked", "placement", "request", "tasks")

    def __init__(
        self, key: int, placement: Placement, request: Request, task: int, lane: Lane | None
    ) -> None:
        self.key = key
        self.placement = placement
        self.request = request
        self.lane = lane  # the backend queue its tasks run in; None: nothing may queue here
        self.tasks: deque[int] = deque([task])
        self.looked = -1  # the last task whose children were looked at for a follower


class Flight:
    """What an attempt holds while it is queued or running."""

    __slots__ = ("chain", "follows", "kill", "placement", "since")

    def __init__(self, chain: Chain, follows: int | None = None) -> None:
        self.chain = chain
        self.follows = follows  # a follower: the task ahead of it that it waits for
        self.kill: tuple[KillKind, str] | None = None  # (kind, reason) of a kill on the way
        self.placement: Placement | None = None  # while it runs
        self.since = 0.0  # when it started running


class Chains:
    """Every attempt in flight, the chains they run in, and the running attempts' deadlines."""

    def __init__(self, table: TaskTable, pool: Pool, policy: Policy) -> None:
        self.table = table
        self.pool = pool
        self.policy = policy
        self.flights: dict[int, Flight] = {}
        self.running: dict[int, TaskRecord] = {}
        self.open: dict[Request, dict[int, Chain]] = {}  # chains accepting prefetch
        self.runtime: dict[Request, float] = {}  # moving average of run time per shape
        self.deadlines: list[tuple[float, int, int]] = []  # (due, task, attempt) running
        self.keys = itertools.count()

    # -- questions --------------------------------------------------------------------------
    def kill_of(self, task: int) -> tuple[KillKind, str] | None:
        f = self.flights.get(task)
        return None if f is None else f.kill

    def placements(self) -> list[Placement]:
        flights = self.flights
        return [p for t in self.running if (p := flights[t].placement) is not None]

    def ahead(self, task: int) -> int | None:
        """The task running at the head of the chain a task is queued in."""
        f = self.flights.get(task)
        return None if f is None else f.chain.tasks[0]

    # -- starting ---------------------------------------------------------------------------
    def start(self, task: int, placement: Placement, cause: str, out: list[Command]) -> None:
        """Start attempt n+1 of a ready task on ``placement``, heading a new chain."""
        e = self.table.records[task]
        e.attempt += 1
        shape = e.info.shape
        chain = Chain(next(self.keys), placement, shape.request, task, shape.lane)
        f = self.flights[task] = Flight(chain)
        self._run(e, f, placement, cause, out)
        out.append(Dispatch(cause, task, e.attempt, placement))
        if self.policy.prefetch and shape.lane:
            self.open.setdefault(chain.request, {})[chain.key] = chain

    def _run(
        self, e: TaskRecord, f: Flight, placement: Placement, cause: str, out: list[Command]
    ) -> None:
        table = self.table
        f.placement = placement
        f.since = table.now
        self.running[e.info.id] = e
        table.move(e, RUNNING, cause, out)
        timeout = e.info.shape.timeout
        if timeout is not None:
            heapq.heappush(self.deadlines, (table.now + timeout, e.info.id, e.attempt))

    def _queue(self, e: TaskRecord, chain: Chain, follows: int | None) -> int:
        """Queue a new attempt of ``e`` at the end of ``chain``; return the task ahead of it."""
        e.attempt += 1
        after = chain.tasks[-1]
        chain.tasks.append(e.info.id)
        self.flights[e.info.id] = Flight(chain, follows)
        return after

    # -- ending -----------------------------------------------------------------------------
    def end_run(self, e: TaskRecord, cause: str, out: list[Command]) -> None:
        """The running attempt of ``e`` ended: hand its chain to the next queued task or free
        its placement."""
        tid = e.info.id
        f = self.flights.pop(tid)
        chain = f.chain
        assert chain.tasks[0] == tid
        took = self.table.now - f.since
        old = self.runtime.get(chain.request)
        self.runtime[chain.request] = took if old is None else 0.8 * old + 0.2 * took
        chain.tasks.popleft()
        del self.running[tid]
        if not chain.tasks:
            self.pool.release(chain.placement)
            self.open.get(chain.request, {}).pop(chain.key, None)
            return
        nid = chain.tasks[0]
        nf = self.flights[nid]
        nf.follows = None  # it starts: what it followed succeeded
        nxt = self.table.records[nid]
        self._run(nxt, nf, chain.placement, cause, out)
        if nf.kill is not None:  # cancelled while it was queued: stop it now it started
            out.append(Kill(cause, nid, nxt.attempt, nf.kill[1], nf.kill[0]))
        if chain.lane and len(chain.tasks) <= self.policy.prefetch:
            self.open.setdefault(chain.request, {})[chain.key] = chain

    def unqueue(self, e: TaskRecord) -> None:
        """Take ``e`` out of the chain it is queued in."""
        chain = self.flights.pop(e.info.id).chain
        chain.tasks.remove(e.info.id)
        if self.policy.prefetch and chain.tasks and chain.lane:
            self.open.setdefault(chain.request, {})[chain.key] = chain

    def take_back(self, e: TaskRecord, cause: str, out: list[Command], reason: str) -> None:
        """Take back a queued task before it starts (it would run on an output that is about
        to change): pending again, costing no attempt; the backend is told to drop it, and a
        late report of that attempt is stale (the next dispatch is a new attempt)."""
        assert e.state is QUEUED and self.flights[e.info.id].kill is None
        self.unfollow(e, cause, out)
        self.unqueue(e)
        e.first += 1
        out.append(Kill(cause, e.info.id, e.attempt, reason, KillKind.STOPPED))
        self.table.move(e, PENDING, cause, out, reason)

    def unfollow(self, e: TaskRecord, cause: str, out: list[Command]) -> None:
        """Take back the followers queued behind ``e`` (and theirs): ``e`` will not succeed
        there, or returned a Response; they wait for it as pending tasks again."""
        f = self.flights.get(e.info.id)
        if f is None or f.chain.tasks[-1] == e.info.id:
            return
        chain = f.chain
        tasks = list(chain.tasks)
        lead = e.info.id
        back = []
        for t in tasks[tasks.index(lead) + 1 :]:
            if self.flights[t].follows != lead:
                break  # followers of ``e`` come right behind it
            back.append(t)
            lead = t
        records = self.table.records
        for t in back:  # (what ends ``e`` decides what becomes of the chain)
            chain.tasks.remove(t)
            del self.flights[t]
            r = records[t]
            r.first += 1  # it never started: no retry budget spent
            why = f"task {e.info.id} ahead of it did not succeed"
            self.table.move(r, PENDING, cause, out, why)

    def give_back(self, e: TaskRecord, cause: str, out: list[Command]) -> None:
        """Take back an attempt that never started: it costs no attempt of a retry budget."""
        f = self.flights.get(e.info.id)
        if f is None:  # a follower already taken back, with the task it followed
            return
        e.first += 1  # attempt numbers stay unique: a late report of it is then stale
        kill = f.kill
        cancelled = kill is not None and kill[0] is KillKind.CANCELLED
        if cancelled:
            self.unfollow(e, cause, out)  # before what follows it is cancelled with it
        f.chain.tasks.remove(e.info.id)
        del self.flights[e.info.id]
        if e.state is RUNNING:
            del self.running[e.info.id]
        table = self.table
        if kill is not None and cancelled:
            table.move(e, CANCELLED, cause, out, kill[1])
            table.end_downstream(e, table.children_of(e), cause, out)
        else:
            table.wait(e, cause, out, "returned unstarted by the backend")

    def lose(self, e: TaskRecord, cause: str, out: list[Command]) -> None:
        """The chain of ``e`` is lost (the backend returned ``e`` unstarted): free its placement
        and make every task on it ready again (their own reports, if any, are then stale)."""
        f = self.flights.get(e.info.id)
        if f is None:
            return
        chain = f.chain
        self.open.get(chain.request, {}).pop(chain.key, None)
        records = self.table.records
        head = records[chain.tasks[0]]
        if head.state is RUNNING and head is not e:
            # The head still runs (or its outcome is on the way): only the queued ones go.
            for t in list(chain.tasks)[1:]:
                self.give_back(records[t], cause, out)
            return
        for t in list(chain.tasks):
            self.give_back(records[t], cause, out)
        self.pool.release(chain.placement)

    # -- kills ------------------------------------------------------------------------------
    def kill(
        self, e: TaskRecord, kind: KillKind, reason: str, cause: str, out: list[Command]
    ) -> None:
        """Ask the backend to stop the attempt of ``e`` in flight (once)."""
        f = self.flights[e.info.id]
        if f.kill is None:
            f.kill = (kind, reason)
            out.append(Kill(cause, e.info.id, e.attempt, reason, kind))

    def stop_all(self, reason: str, cause: str, out: list[Command]) -> None:
        """Stop every attempt in flight: the run stops."""
        records = self.table.records
        for tid in list(self.running):
            for t in list(self.flights[tid].chain.tasks):
                self.kill(records[t], KillKind.STOPPED, reason, cause, out)

    def time_out(self, cause: str, out: list[Command]) -> None:
        """Kill the running attempts whose timeout has passed."""
        dl = self.deadlines
        now = self.table.now
        records = self.table.records
        while dl and dl[0][0] <= now:
            _, task, attempt = heapq.heappop(dl)
            e = records.get(task)
            if e is None or e.state is not RUNNING or e.attempt != attempt:
                continue
            if self.flights[task].kill is not None:
                continue
            self.kill(e, KillKind.TIMEOUT, f"timed out after {e.info.timeout:g} s", cause, out)

    # -- prefetch and followers ---------------------------------------------------------------
    def touched(self, tasks: list[int]) -> None:
        """Tasks in flight got new children: look at them again for a follower."""
        for t in tasks:
            self.flights[t].chain.looked = -1

    def prefetch(self, avoid: frozenset[int], cause: str, out: list[Command]) -> None:
        """Queue ready tasks of short-running shapes behind running tasks of the same shape,
        and followers (see the module doc): the chain of the last task first, so that a chain
        of dependent tasks runs on, then the most urgent ready task, and so on."""
        policy = self.policy
        follow = policy.follow
        queue = self.table.heap
        records = self.table.records
        for request, chains in self.open.items():
            if not chains or (not follow and request not in queue.heaps):
                continue
            took = self.runtime.get(request)
            if took is None:  # nothing of this shape finished yet: no basis to prefetch
                continue
            depth = min(policy.prefetch, int(policy.prefetch_window / max(took, 1e-6)))
            if depth < 1:
                continue
            for key, chain in list(chains.items()):
                if avoid and any(s.node in avoid for s in chain.placement.slots):
                    continue
                while len(chain.tasks) <= depth:
                    if follow and self._follow(chain, cause, out):
                        continue
                    if request not in queue.heaps:
                        break
                    head = queue.peek(request)
                    if head is None or records[head].info.lane != chain.lane:
                        break  # the most urgent task of this shape cannot queue here
                    e = records[queue.pop(request)]
                    after = self._queue(e, chain, None)
                    self.table.move(e, QUEUED, cause, out)
                    out.append(Dispatch(cause, e.info.id, e.attempt, chain.placement, after))
                if len(chain.tasks) > depth:
                    del chains[key]

    def _follow(self, chain: Chain, cause: str, out: list[Command]) -> bool:
        """Queue behind the chain's last task a child of it that waits for nothing else (True
        if one was). Each task's children are looked at once: a task with thousands of them
        costs that once, not at every pass."""
        records = self.table.records
        tid = chain.tasks[-1]
        tail = records[tid]
        if not tail.children or chain.looked == tid or self.flights[tid].follows is not None:
            return False
        chain.looked = tid
        head = self.table.heap.peek(chain.request)
        floor = records[head].info.priority if head is not None else None
        for c in tail.children:
            f = records[c]
            if (
                f.state is PENDING
                and f.waiting == 1  # only ``tail``, which has not succeeded yet
                and f.info.follow
                and f.info.request == chain.request
                and f.info.lane == chain.lane
                and (floor is None or f.info.priority >= floor)
            ):
                self._queue(f, chain, tid)
                self.table.move(f, QUEUED, cause, out, f"follows task {tid}")
                out.append(Dispatch(cause, c, f.attempt, chain.placement, tid, True))
                return True
        return False
