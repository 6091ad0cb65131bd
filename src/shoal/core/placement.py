"""Placement: which ready tasks start where, each scheduling pass (``Policy.mode``).

* ``backfill`` (the default): whenever resources free up, the most urgent ready task that fits
  starts: higher ``priority`` first, then the longer ``estimate`` (expected run time; tasks
  without one come after those with one), then submission order (``ready.urgency``).
  ``order="largest"`` puts the largest request first among equal priority (GPUs, then cores), so
  that small tasks fill the gaps at the end; measured on W3 (bench/RESULTS.md) it did worse than
  submission order with the local backend, whose workers serve one task width each and must be
  replaced when the mix of widths changes, so it is not the default. A task that does not fit yet
  does not block smaller ones behind it, with one guard against starvation: once younger tasks
  have been starting ahead of the oldest ready task (of the top priority) for ``reserve_after``
  seconds, it gets a reservation. The node it is most likely to fit on (the one with the most
  free cores among those large enough) takes no new work that would delay it: a task starts
  there only if it is expected to end before the large task would fit anyway, or if it fits in
  what the large task leaves spare (EASY backfilling, :class:`Window`, with estimates given or
  learned per shape; without any, the node drains until the large task fits). Other nodes keep
  backfilling. The reservation is derived afresh on every pass; only when the oldest task was
  first passed over is kept (``TaskTable.passed``), and a resume starts that clock anew.
* ``waves``: start everything that fits, then start nothing until all of it has finished.
  It exists to compare against; it wastes the cores that wait for the slowest task of a wave.

After placing, a backfill pass queues work behind running tasks (prefetch and followers,
:mod:`shoal.core.chains`).
"""

from __future__ import annotations

import math
from bisect import insort

from shoal.core.chains import Chains
from shoal.core.commands import Command
from shoal.core.policy import Mode, Order
from shoal.core.ready import Item, band
from shoal.core.resources import Placement, Pool, Request
from shoal.core.tasks import Records, TaskTable


def schedule(table: TaskTable, chains: Chains, cause: str, out: list[Command]) -> None:
    """One scheduling pass: start what fits, most urgent first, then queue behind.

    The heads of the shapes are read and sorted once per pass; a start changes only the head
    of its own shape, which is put back in order (a pass costs O(shapes + starts x log)). A
    shape that did not fit stays blocked for the pass: within a pass resources only shrink."""
    policy = chains.policy
    queue = table.heap
    if not (queue or (policy.follow and chains.open)):
        return
    waves = policy.mode is Mode.WAVES
    if waves and chains.running:
        return
    pool = chains.pool
    records = table.records
    blocked: set[Request] = set()
    avoid: frozenset[int] = frozenset()
    window: Window | None = None
    guard: int | None = None  # the oldest ready task, whose wait the guard times
    key = _largest_first if policy.order is Order.LARGEST else _gpus_first
    heads = sorted([(key(item, r), item, r) for item, r in queue.heads()])
    oldest: tuple[float, Item, Request] | None = None
    while heads:
        first = None
        if not avoid and not waves:
            # Starvation guard: among the heads of the top priority, the one that has waited
            # longest (not the longest estimate: a stream of long small tasks must not
            # starve a wide one), once younger tasks have been starting ahead of it for
            # reserve_after seconds, goes first if it fits, and gets a reservation if it does
            # not. (Waiting in a long queue is no starvation: only being passed over is.)
            if oldest is None:
                oldest = _oldest(heads, records)
            _, (_, guard, _), request = oldest
            passed = table.passed
            waited = table.now - passed[1] if passed and passed[0] == guard else 0.0
            if waited >= policy.reserve_after:
                if pool.fits(request):
                    first = request
                else:
                    blocked.add(request)
                    avoid = reserve(pool, request)
                    window = Window.of(chains, avoid, request)
        at = _start(heads, first, blocked, avoid, window, chains, cause, out)
        if at < 0:
            break
        _, (_, task, _), request = heads.pop(at)
        if guard is not None:  # the oldest started, or was passed over: since when
            if task == guard:
                table.passed = guard = None
            elif table.passed is None or table.passed[0] != guard:
                table.passed = (guard, table.now)
        new = queue.head(request)
        if new is not None:
            insort(heads, (key(new, request), new, request))
        if oldest is not None:  # only the started shape's head changed
            if task == oldest[1][1]:
                oldest = None
            elif new is not None and band(new[0]) == band(oldest[1][0]):
                mine = (records[new[1]].ready_since, new, request)
                if mine[:2] < oldest[:2]:
                    oldest = mine
    if policy.prefetch and not waves:
        chains.prefetch(avoid, cause, out)


def _start(
    heads: list[tuple[tuple[float, ...], Item, Request]],
    first: Request | None,
    blocked: set[Request],
    avoid: frozenset[int],
    window: Window | None,
    chains: Chains,
    cause: str,
    out: list[Command],
) -> int:
    """Start the first head (``first``'s shape before all) that fits; its index in ``heads``,
    or -1 when none does. A shape that does not fit is blocked."""
    pool = chains.pool
    order = range(len(heads))
    if first is not None:
        at = next(i for i, h in enumerate(heads) if h[2] == first)
        order = [at, *(i for i in order if i != at)]  # type: ignore[assignment]
    for i in order:
        _, (_, task, _), request = heads[i]
        if request in blocked:
            continue
        placement = pool.allocate(request, avoid)
        if placement is None and window is not None:
            placement = window.take(chains, chains.table.records[task].info.estimate, request)
        if placement is not None:
            chains.start(chains.table.heap.pop(request), placement, cause, out)
            return i
        blocked.add(request)
    return -1


def _oldest(
    heads: list[tuple[tuple[float, ...], Item, Request]], records: Records
) -> tuple[float, Item, Request]:
    """Among the heads of the top priority, the one ready longest (then the most urgent)."""
    top = min(math.ceil(item[0]) for _, item, _ in heads)  # band(), inline: a pass calls it often
    rows = records.rows  # records by id, as a list: faster than records[...]
    best: tuple[float, Item, Request] | None = None
    for _, item, request in heads:
        if math.ceil(item[0]) == top:
            tid = item[1]
            e = rows[tid] if tid < len(rows) else None
            mine = ((e or records[tid]).ready_since, item, request)
            if best is None or mine[:2] < best[:2]:
                best = mine
    assert best is not None
    return best


def _gpus_first(item: Item, request: Request) -> tuple[float, ...]:
    """Urgency order (ready.urgency), and among equally urgent tasks those that use GPUs first:
    a core a CPU task does not take now is taken later, a GPU left idle is lost. (Where no GPU
    is idle, a GPU task does not fit and is passed by, so the order then is urgency's.)"""
    return (item[0], not request.gpus, item[1])


def _largest_first(item: Item, request: Request) -> tuple[float, ...]:
    """Among equal priority, the biggest first: small ones fill the gaps."""
    return (band(item[0]), *_size(request), item[0], item[1])


class Window:
    """Backfill on a reserved node (EASY backfilling): the time ``shadow`` at which the
    starving task will fit there, from the expected ends of the tasks running there (start
    plus estimate, given or learned per shape), and the cores and GPUs it leaves ``spare``
    then. A task may start on the node if it is expected to end before the shadow time, or
    if it fits in what is spare then: the starving task starts no later for it. A running
    task past its estimate is expected to end now, which closes the window: an estimate
    that was too short delays the starving task by that task's overrun at most."""

    __slots__ = ("node", "now", "shadow", "spare")

    def __init__(self, node: int, now: float, shadow: float, spare: list[int]) -> None:
        self.node, self.now, self.shadow, self.spare = node, now, shadow, spare

    @classmethod
    def of(cls, chains: Chains, reserved: frozenset[int], request: Request) -> Window | None:
        """The window on the one reserved node, or None where it cannot be known (a task of
        unknown run time there, memory, several nodes)."""
        if len(reserved) != 1 or request.memory or request.ranks != 1:
            return None
        (node,) = reserved
        free = chains.pool.free[node]
        have = [free.ncores, free.ngpus]
        now = chains.table.now
        ends: list[tuple[float, int, int]] = []
        for tid, rec in chains.running.items():
            placement = chains.flights[tid].placement
            if placement is None:
                continue
            for slot in placement.slots:
                if slot.node != node:
                    continue
                guess = _estimate(chains, rec.info.estimate, rec.info.request)
                if guess is None:
                    return None
                end = max(now, chains.flights[tid].since + guess)
                ends.append((end, len(slot.cores), len(slot.gpus)))
        ends.sort()
        shadow = now
        for end, cores, gpus in ends:
            if have[0] >= request.cpus and have[1] >= request.gpus:
                break
            shadow = end
            have[0] += cores
            have[1] += gpus
        if have[0] < request.cpus or have[1] < request.gpus:
            return None
        return cls(node, now, shadow, [have[0] - request.cpus, have[1] - request.gpus])

    def take(self, chains: Chains, estimate: float, request: Request) -> Placement | None:
        """A placement on the reserved node for a task that does not delay the starving one."""
        if request.memory or request.ranks != 1:
            return None
        guess = _estimate(chains, estimate, request)
        before = guess is not None and self.now + guess <= self.shadow
        cpus, gpus = request.cpus, request.gpus
        spare = cpus <= self.spare[0] and gpus <= self.spare[1]
        if not (before or spare):
            return None
        others = frozenset(range(len(chains.pool.nodes))) - {self.node}
        placement = chains.pool.allocate(request, others)
        if placement is not None and not before:
            self.spare[0] -= cpus
            self.spare[1] -= gpus
        return placement


def _estimate(chains: Chains, given: float, request: Request) -> float | None:
    """A task's expected run time: its own estimate, else the moving average of finished
    tasks of its shape, else None (unknown)."""
    return given if given > 0 else chains.runtime.get(request)


def reserve(pool: Pool, request: Request) -> frozenset[int]:
    """Nodes to keep free for a starving task of shape ``request``."""
    nodes = pool.nodes
    big = [
        i
        for i, n in enumerate(nodes)
        if len(n.cores) >= request.cpus * request.ranks
        and len(n.gpus) >= request.gpus * request.ranks
        and (not n.memory or n.memory >= request.memory * request.ranks)
    ]
    if not big:  # it spans nodes: hold everything until it fits
        return frozenset(range(len(nodes)))
    best = max(big, key=lambda i: (pool.free[i].ncores, pool.free[i].ngpus, -i))
    return frozenset({best})


def _size(r: Request) -> tuple[int, int, int]:
    """Sort key putting the largest request first: GPUs, then cores, then memory."""
    return (-r.gpus * r.ranks, -r.cpus * r.ranks, -r.memory * r.ranks)
