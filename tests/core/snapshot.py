"""The whole state of a scheduler as plain values, to show that an event changed nothing."""

from __future__ import annotations

from typing import Any

from shoal.core import Scheduler


def deep(s: Scheduler) -> Any:
    """Every field of the scheduler, of each task record, flight and chain, and of the heaps
    (equal iff the two schedulers would behave alike from here on)."""
    table, chains = s._table, s._chains
    tasks = {
        t: (
            e.info,
            e.state,
            e.waiting,
            tuple(e.children or ()),
            tuple(e.gates or ()),
            e.attempt,
            e.first,
            e.generation,
            e.ready_since,
            e.root,
            e.skips,
        )
        for t, e in table.records.items()
    }
    flights = {
        t: (
            f.placement,
            f.since,
            f.kill,
            f.follows,
            f.chain.key,
            tuple(f.chain.tasks),
            f.chain.looked,
        )
        for t, f in chains.flights.items()
    }
    return (
        tasks,
        flights,
        dict(table.counts),
        sorted(chains.running),
        table.now,
        sorted(chains.deadlines),
        sorted(s._retries),
        table.open,
        repr(chains.keys),
        {r: {k: (c.key, tuple(c.tasks)) for k, c in d.items()} for r, d in chains.open.items()},
        dict(chains.runtime),
        s.stopped,
        {r: sorted(line.items()) for r, line in table.heap.heaps.items()},
        sorted(i for _, i in table.heap.items() if table.heap.live(i)),
        table.heap.size,
        [(f.cores, f.gpus, f.memory, f.ncores, f.ngpus) for f in s.pool.free],
    )
