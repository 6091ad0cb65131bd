"""The whole state of a scheduler as plain values, to show that an event changed nothing."""

from __future__ import annotations

from typing import Any

from shoal.core import Scheduler


def deep(s: Scheduler) -> Any:
    """Every field of the scheduler and of each task entry, slot and heap (equal iff the two
    schedulers would behave alike from here on)."""
    tasks = {
        t: (
            e.info,
            e.state,
            e.waiting,
            tuple(e.children or ()),
            tuple(e.gates or ()),
            e.attempt,
            e.first,
            e.placement,
            e.generation,
            e.ready_since,
            e.since,
            e.kill,
            None if e.slot is None else (e.slot.key, tuple(e.slot.tasks), e.slot.looked),
            e.root,
            e.follows,
        )
        for t, e in s.tasks.items()
    }
    return (
        tasks,
        dict(s.counts),
        sorted(s.running),
        s.now,
        sorted(s._deadlines),
        sorted(s._retries),
        s._open,
        repr(s._slot_keys),
        {r: {k: (sl.key, tuple(sl.tasks)) for k, sl in d.items()} for r, d in s.open_slots.items()},
        dict(s.runtime),
        s.stopped,
        {r: sorted(h) for r, h in s.queue.heaps.items()},
        dict(s.queue.live),
        s.queue.size,
        [(f.cores, f.gpus, f.memory, f.ncores, f.ngpus) for f in s.pool.free],
    )
