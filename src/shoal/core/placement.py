"""Placement: which ready tasks start where, each scheduling pass (``Policy.mode``).

* ``backfill`` (the default): whenever resources free up, the most urgent ready task that fits
  starts: higher ``priority`` first, then the longer ``estimate`` (expected run time; tasks
  without one come after those with one), then submission order (``ready.urgency``).
  ``order="largest"`` puts the largest request first among equal priority (GPUs, then cores), so
  that small tasks fill the gaps at the end; measured on W3 (bench/RESULTS.md) it did worse than
  submission order with the local backend, whose workers serve one task width each and must be
  replaced when the mix of widths changes, so it is not the default. A task that does not fit yet
  does not block smaller ones behind it, with one guard against starvation: once the most urgent
  ready task (by priority, then age) has waited ``reserve_after`` seconds, it gets a reservation.
  The node it is most likely to fit on (the one with the most free cores among those large enough)
  takes no new work until the task starts there; other nodes keep backfilling. On a single node
  this means the node drains until the large task fits. The reservation is derived afresh on every
  pass, so there is no reservation state to persist or to go stale.
* ``waves``: start everything that fits, then start nothing until all of it has finished.
  It exists to compare against; it wastes the cores that wait for the slowest task of a wave.

After placing, a backfill pass queues work behind running tasks (prefetch and followers,
:mod:`shoal.core.chains`).
"""

from __future__ import annotations

from shoal.core.chains import Chains
from shoal.core.commands import Command
from shoal.core.policy import Mode, Order
from shoal.core.ready import band
from shoal.core.resources import Pool, Request
from shoal.core.tasks import TaskTable


def schedule(table: TaskTable, chains: Chains, cause: str, out: list[Command]) -> None:
    """One scheduling pass: start what fits, most urgent first, then queue behind."""
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
    largest = policy.order is Order.LARGEST
    while queue:
        heads = queue.heads()  # most urgent first (ready.urgency), then submission
        first = None
        if not avoid and not waves:
            # Starvation guard: among the heads of the top priority, the one that has waited
            # longest (not the longest estimate: a stream of long small tasks must not
            # starve a wide one), once it has waited reserve_after seconds, goes first if
            # it fits, and gets a reservation if it does not.
            top = band(heads[0][0][0])
            oldest = min(
                (h for h in heads if band(h[0][0]) == top),
                key=lambda h: records[h[0][1]].ready_since,
            )
            (_, task, _), request = oldest
            waited = table.now - records[task].ready_since
            if waited >= policy.reserve_after:
                if pool.fits(request):
                    first = oldest
                else:
                    blocked.add(request)
                    avoid = reserve(pool, request)
        if largest:  # among equal priority, the biggest first: small ones fill the gaps
            heads.sort(key=lambda h: (band(h[0][0]), _size(h[1]), h[0][0], h[0][1]))
        if first is not None and heads[0] is not first:
            heads.remove(first)
            heads.insert(0, first)
        started = False
        for _, request in heads:
            if request in blocked:
                continue
            placement = pool.allocate(request, avoid)
            if placement is not None:
                chains.start(queue.pop(request), placement, cause, out)
                started = True
                break
            blocked.add(request)
        if not started:
            break
    if policy.prefetch and not waves:
        chains.prefetch(avoid, cause, out)


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
