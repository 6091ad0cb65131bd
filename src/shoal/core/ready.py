"""Ready tasks, grouped by resource shape, each group a priority heap.

Tasks with the same :class:`Request` are interchangeable for placement, so one heap per shape is
enough: picking the next task costs O(shapes + log n), never a scan of the backlog. Entries are
removed lazily: a heap item whose generation no longer matches its task is skipped.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from shoal.core.resources import Request
from shoal.core.states import State

READY = State.READY

# (urgency, task id, generation): the smallest item is the most urgent, oldest first.
Item = tuple[float, int, int]


LONGEST = 1e6  # seconds: longer estimates order as this one (about 12 days)
FOLDED = 1 << 30  # beyond this |priority| a float cannot hold the folded estimate apart


def urgency(priority: int, estimate: float) -> float:
    """The sort key of a ready task: higher priority first; among equal priority, the longer
    estimate first (longest-first packing: the slowest tasks start early instead of finishing
    last); then submission order (the task id, second in the item). A task without an
    estimate (0) comes after those with one at its priority.

    The estimate (at most LONGEST) is folded into (-1, 0) by e / (1 + e), which keeps its
    order and stays at least 1e-6 away from the next priority: a float has room for that
    below |priority| = 2**30, and beyond it estimates are not used. The key is a plain int
    when there is no estimate, as most tasks have none, so a million queued tasks cost no
    float each."""
    if not estimate or not -FOLDED < priority < FOLDED:
        return -priority
    e = min(estimate, LONGEST)
    return -priority - e / (1.0 + e)


def band(key: float) -> int:
    """The priority part of an urgency (as ``-priority``), without the folded estimate."""
    return math.ceil(key)


class Entry(Protocol):
    """What the queue reads of a task's record (core.tasks.TaskRecord)."""

    state: State
    generation: int


class Line:
    """The ready tasks of one shape: a heap of items, and beside it a line of task ids that
    share one key and came in id order for the first time (generation 1: the common case of
    tasks submitted together with no estimate), kept as 8-byte ints instead of an item each.
    Merged, the two give the order one heap would."""

    __slots__ = ("at", "heap", "ids", "key", "last")

    def __init__(self) -> None:
        self.heap: list[Item] = []
        self.ids = array("q")  # the line; ids[at:] are waiting
        self.at = 0
        self.key: float = 0
        self.last = -1

    def push(self, key: float, task: int, generation: int) -> None:
        ids = self.ids
        if generation == 1:
            if self.at == len(ids):  # empty: it starts anew with this key
                if ids:
                    self.ids = ids = array("q")
                    self.at = 0
                self.key = key
                self.last = task
                ids.append(task)
                return
            if key == self.key and task > self.last:
                self.last = task
                ids.append(task)
                return
        heapq.heappush(self.heap, (key, task, generation))

    def items(self) -> Iterator[Item]:
        yield from self.heap
        key = self.key
        for task in self.ids[self.at :]:
            yield (key, task, 1)


class ReadyHeap:
    """The ready tasks, one :class:`Line` per shape. An item is live while its task is ready
    with the item's generation, which the task's record says (``records``: the table's): no
    second index of the queued tasks (a million queued tasks would pay ~40 B each for one)."""

    __slots__ = ("heaps", "records", "rows", "size")

    def __init__(self, records: Mapping[int, Entry], rows: Sequence[Entry | None] = ()) -> None:
        self.heaps: dict[Request, Line] = {}
        self.records = records
        self.rows = rows  # records[i] is rows[i] for i < len(rows): a faster way to it
        self.size = 0

    def push(
        self, task: int, request: Request, priority: int, generation: int, estimate: float = 0.0
    ) -> None:
        """Queue a task that just became ready with this generation (its record says so)."""
        line = self.heaps.get(request)
        if line is None:
            line = self.heaps[request] = Line()
        line.push(urgency(priority, estimate) if estimate else -priority, task, generation)
        self.size += 1

    def discard(self, task: int) -> None:
        """A task leaves the queue (called before it leaves the ready state)."""
        if self.records[task].state is READY:
            self.size -= 1

    def live(self, item: Item) -> bool:
        e = self.records[item[1]]
        return e.generation == item[2] and e.state is READY

    def items(self) -> Iterator[tuple[Request, Item]]:
        """Every entry, live or not, with its shape."""
        for request, line in self.heaps.items():
            for item in line.items():
                yield request, item

    def _clean(self, request: Request) -> Item | None:
        """The most urgent live item of a shape, dropping dead ones on the way."""
        line = self.heaps[request]
        records = self.records
        rows = self.rows
        known = len(rows)
        heap = line.heap
        while heap:
            item = heap[0]
            tid = item[1]
            e = rows[tid] if tid < known else records[tid]
            if e is not None and e.generation == item[2] and e.state is READY:
                break
            heapq.heappop(heap)
        ids = line.ids
        at = line.at
        end = len(ids)
        while at < end:
            tid = ids[at]
            e = rows[tid] if tid < known else records[tid]
            if e is not None and e.generation == 1 and e.state is READY:
                break
            at += 1
        if at > 4096 and at * 2 > end:  # let the line's front go
            del ids[:at]
            at = 0
            end = len(ids)
        line.at = at
        if at < end:
            first = (line.key, ids[at], 1)
            return heap[0] if heap and heap[0] < first else first
        if heap:
            return heap[0]
        del self.heaps[request]
        return None

    def heads(self) -> list[tuple[Item, Request]]:
        """The most urgent live item of every shape, most urgent shape first."""
        out = []
        for request in list(self.heaps):
            item = self._clean(request)
            if item is not None:
                out.append((item, request))
        out.sort(key=lambda pair: pair[0])
        return out

    def head(self, request: Request) -> Item | None:
        """The most urgent live item of this shape, or None."""
        return self._clean(request) if request in self.heaps else None

    def peek(self, request: Request) -> int | None:
        """The most urgent live task of this shape, or None."""
        if request not in self.heaps:
            return None
        item = self._clean(request)
        return None if item is None else item[1]

    def pop(self, request: Request) -> int:
        item = self._clean(request)
        assert item is not None
        line = self.heaps[request]
        if line.heap and line.heap[0] is item:
            heapq.heappop(line.heap)
        else:
            line.at += 1
        self.size -= 1
        return item[1]  # the caller moves it out of the ready state

    def __len__(self) -> int:
        return self.size
