"""The pool's index of nodes by free resources (many nodes: one-rank requests find their node
in a few lookups): it agrees with a scan of every node after any sequence of allocations and
releases, it never places on an avoided node, and it places CPU-only tasks where GPUs are
used already, so that GPUs stay reachable for GPU tasks."""

from __future__ import annotations

import random

import pytest

from shoal.core.resources import INDEXED, Node, Placement, Pool
from shoal.spec.request import Request


def _scan_fits(pool: Pool, req: Request, avoid: frozenset[int]) -> bool:
    return any(
        i not in avoid and f.ncores >= req.cpus and f.ngpus >= req.gpus
        for i, f in enumerate(pool.free)
    )


@pytest.mark.parametrize("seed", range(8))
def test_the_index_agrees_with_a_scan_of_every_node(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [Node.sized(f"n{i}", rng.choice((4, 8, 16)), rng.choice((0, 2, 4))) for i in range(12)]
    pool = Pool(tuple(nodes))
    assert pool.rooms is not None and len(nodes) >= INDEXED
    held: list[Placement] = []
    for _ in range(2000):
        if held and rng.random() < 0.45:
            pool.release(held.pop(rng.randrange(len(held))))
        else:
            req = Request(rng.randint(1, 8), rng.choice((0, 0, 1, 2)))
            avoid = frozenset(rng.sample(range(len(nodes)), rng.choice((0, 0, 1, 3))))
            expected = _scan_fits(pool, req, avoid)
            assert pool.fits(req, avoid) is expected
            placed = pool.allocate(req, avoid)
            assert (placed is not None) is expected
            if placed is not None:
                (slot,) = placed.slots
                assert slot.node not in avoid
                assert len(slot.cores) == req.cpus and len(slot.gpus) == req.gpus
                held.append(placed)
        pool.check(held)


def test_cpu_tasks_go_where_gpus_are_used_and_gpu_tasks_fit_tightly() -> None:
    pool = Pool(tuple(Node.sized(f"n{i}", 16, 4) for i in range(INDEXED)))
    gpu = pool.allocate(Request(2, 4))  # node 0 has no idle GPU left
    assert gpu is not None
    cpu = pool.allocate(Request(4, 0))
    assert cpu is not None and cpu.slots[0].node == gpu.slots[0].node  # GPUs elsewhere stay
    small = pool.allocate(Request(1, 1))
    big = pool.allocate(Request(8, 2))
    assert small is not None and big is not None
    assert small.slots[0].node == big.slots[0].node  # the tightest fit: one node fills first


def test_the_stateful_suite_with_every_pool_indexed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler's state machine (tests/core/test_stateful.py), its pools of 1-3 nodes
    indexed as if they were many: placements, reservations, prefetch and kills keep every
    invariant on the index path too."""
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test

    from shoal.core import resources

    from .test_stateful import SchedulerMachine

    monkeypatch.setattr(resources, "INDEXED", 1)
    run_state_machine_as_test(
        SchedulerMachine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None),
    )
