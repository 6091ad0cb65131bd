"""The ready queue (core/ready.py) gives the order a single heap of (urgency, task,
generation) would, whatever mix of line and heap entries its pushes make: first readiness in
id order with one key (the line), estimates, priorities, tasks that leave and come back."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from shoal.core.ready import ReadyHeap, urgency
from shoal.core.resources import Request
from shoal.core.states import State

SHAPES = (Request(1), Request(2))


@dataclass
class Rec:
    state: State = State.PENDING
    generation: int = 0


ops = st.lists(
    st.tuples(
        st.sampled_from(("ready", "pop", "discard")),
        st.integers(0, 30),  # task
        st.integers(0, 1),  # shape
        st.sampled_from((0, 0, 0, 1)),  # priority
        st.sampled_from((0.0, 0.0, 2.0, 5.0)),  # estimate
    ),
    max_size=120,
)


@given(ops)
def test_the_order_is_one_heaps(steps: list[tuple[str, int, int, int, float]]) -> None:
    records: dict[int, Rec] = {t: Rec() for t in range(31)}
    queue = ReadyHeap(records)
    model: dict[Request, list[tuple[float, int, int]]] = {r: [] for r in SHAPES}
    shape_of: dict[int, Request] = {}
    for op, task, shape, priority, estimate in steps:
        e = records[task]
        if op == "ready" and e.state is not State.READY:
            e.state = State.READY
            e.generation += 1
            request = shape_of.setdefault(task, SHAPES[shape])
            queue.push(task, request, priority, e.generation, estimate)
            key = urgency(priority, estimate) if estimate else -priority
            heapq.heappush(model[request], (key, task, e.generation))
        elif op == "discard" and e.state is State.READY:
            queue.discard(task)
            e.state = State.PENDING
        elif op == "pop":
            request = SHAPES[shape]
            heap = model[request]
            while heap and not (
                records[heap[0][1]].state is State.READY
                and records[heap[0][1]].generation == heap[0][2]
            ):
                heapq.heappop(heap)
            assert queue.head(request) == (heap[0] if heap else None)
            if heap:
                got = queue.pop(request)
                assert got == heapq.heappop(heap)[1]
                records[got].state = State.RUNNING
        ready = sum(1 for r in records.values() if r.state is State.READY)
        assert len(queue) == ready


def test_a_large_line_lets_its_front_go() -> None:
    records = {t: Rec(State.READY, 1) for t in range(20_000)}
    queue = ReadyHeap(records)
    for t in range(20_000):
        queue.push(t, SHAPES[0], 0, 1)
    for t in range(15_000):
        assert queue.pop(SHAPES[0]) == t
        records[t].state = State.RUNNING
    queue.head(SHAPES[0])
    line = queue.heaps[SHAPES[0]]
    assert len(line.ids) - line.at == 5_000 and len(line.ids) < 20_000
