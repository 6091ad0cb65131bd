"""Resources as integers per node: core ids, GPU ids and megabytes of memory.

A :class:`Pool` tracks what is free on every node with bit masks (bit *i* set = core *i* free),
so taking and giving back cores is a handful of integer operations. A :class:`Placement` names
concrete core ids and GPU ids on concrete nodes; releasing it gives exactly those back, so
``allocated + free == capacity`` holds after every step (``Pool.check`` asserts it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shoal.errors import ResourceError
from shoal.spec.options import Request

__all__ = ["Node", "Placement", "Pool", "Request", "Slot"]


@dataclass(frozen=True, slots=True)
class Node:
    """One machine: its core ids, GPU ids and memory in MB (0 means memory is not tracked)."""

    name: str
    cores: tuple[int, ...]
    gpus: tuple[int, ...] = ()
    memory: int = 0

    @classmethod
    def sized(cls, name: str, cpus: int, gpus: int = 0, memory: int = 0) -> Node:
        return cls(name, tuple(range(cpus)), tuple(range(gpus)), memory)

    def describe(self) -> str:
        mem = f", {self.memory} MB" if self.memory else ""
        return f"node {self.name!r}: {len(self.cores)} cores, {len(self.gpus)} GPUs{mem}"


@dataclass(frozen=True, slots=True)
class Slot:
    """The share of a placement on one node: ``ranks`` ranks on these cores and GPUs."""

    node: int
    cores: tuple[int, ...]
    gpus: tuple[int, ...]
    memory: int
    ranks: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task runs: one slot per node it uses."""

    slots: tuple[Slot, ...]

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(c for s in self.slots for c in s.cores)

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(g for s in self.slots for g in s.gpus)


def _bits(ids: Iterable[int]) -> int:
    mask = 0
    for i in ids:
        mask |= 1 << i
    return mask


def _take(mask: int, n: int) -> tuple[tuple[int, ...], int]:
    """The ``n`` lowest set bits of ``mask`` as ids, and as a mask (the caller checked there
    are enough)."""
    out: list[int] = []
    taken = 0
    for _ in range(n):
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
        taken |= low
    return tuple(out), taken


@dataclass(slots=True)
class _Free:
    cores: int
    gpus: int
    memory: int
    ncores: int
    ngpus: int


INDEXED = 8  # from this many nodes on, one-rank requests find their node in an index


@dataclass(slots=True)
class Pool:
    """Free resources of every node, with allocation and release of placements."""

    nodes: tuple[Node, ...]
    free: list[_Free] = field(init=False)
    idle_gpus: int = field(init=False)  # free GPUs on all nodes (no scan to ask)
    # Nodes by what they have free: rooms[gpus][cores] holds the nodes with exactly that many
    # free (an ordered set), top[gpus] the most free cores of any node with that many free
    # GPUs (-1: none). A one-rank request finds its node by a few lookups, however many
    # nodes there are; it is kept only where that pays and memory is not counted.
    rooms: list[list[dict[int, None]]] | None = field(init=False)
    top: list[int] = field(init=False)
    refusals: dict[Request, str | None] = field(init=False)  # nodes never change: kept

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ResourceError("a run needs at least one node; none was given")
        self.free = [
            _Free(_bits(n.cores), _bits(n.gpus), n.memory, len(n.cores), len(n.gpus))
            for n in self.nodes
        ]
        self.idle_gpus = sum(len(n.gpus) for n in self.nodes)
        self.refusals = {}
        self.rooms = None
        self.top = []
        if len(self.nodes) >= INDEXED and not any(n.memory for n in self.nodes):
            cores = max(len(n.cores) for n in self.nodes)
            gpus = max(len(n.gpus) for n in self.nodes)
            self.rooms = [[{} for _ in range(cores + 1)] for _ in range(gpus + 1)]
            self.top = [-1] * (gpus + 1)
            for i, f in enumerate(self.free):
                self._enter(i, f.ncores, f.ngpus)

    def _enter(self, i: int, cores: int, gpus: int) -> None:
        assert self.rooms is not None
        self.rooms[gpus][cores][i] = None
        if cores > self.top[gpus]:
            self.top[gpus] = cores

    def _leave(self, i: int, cores: int, gpus: int) -> None:
        assert self.rooms is not None
        row = self.rooms[gpus]
        del row[cores][i]
        if not row[cores] and cores == self.top[gpus]:
            c = cores - 1
            while c >= 0 and not row[c]:
                c -= 1
            self.top[gpus] = c

    def _room(self, req: Request, avoid: frozenset[int]) -> int | None:
        """The node for a one-rank request, from the index: the tightest fit, counting GPUs
        first for a task without GPUs (it goes where GPUs are used already, or are none)."""
        assert self.rooms is not None
        for g in range(req.gpus, len(self.rooms)):
            if self.top[g] < req.cpus:
                continue
            row = self.rooms[g]
            for c in range(req.cpus, self.top[g] + 1):
                for i in row[c]:
                    if i not in avoid:
                        return i
        return None

    # -- questions ------------------------------------------------------------------------
    def _ranks_fitting(self, i: int, req: Request) -> int:
        f = self.free[i]
        n = f.ncores // req.cpus if req.cpus else req.ranks
        if req.gpus:
            n = min(n, f.ngpus // req.gpus)
        if req.memory and self.nodes[i].memory:
            n = min(n, f.memory // req.memory)
        return n

    def fits(self, req: Request, avoid: frozenset[int] = frozenset()) -> bool:
        if self.rooms is not None and req.ranks == 1 and req.cpus > 0:
            return self._room(req, avoid) is not None
        total = 0
        for i in range(len(self.nodes)):
            if i in avoid:
                continue
            n = self._ranks_fitting(i, req)
            if n >= req.ranks:
                return True
            total += n
        return total >= req.ranks

    def refusal(self, req: Request) -> str | None:
        """Why ``req`` can never fit on these nodes, even when all of them are idle (or None)."""
        if req in self.refusals:
            return self.refusals[req]
        why = self._refusal(req)
        if len(self.refusals) < 4096:
            self.refusals[req] = why
        return why

    def _refusal(self, req: Request) -> str | None:
        if req.cpus < 0 or req.gpus < 0 or req.ranks < 1 or req.memory < 0:
            return f"a request of {req.describe()} is not valid"
        per_node = []
        for n in self.nodes:
            k = len(n.cores) // req.cpus if req.cpus else req.ranks
            if req.gpus:
                k = min(k, len(n.gpus) // req.gpus)
            if req.memory and n.memory:
                k = min(k, n.memory // req.memory)
            per_node.append(k)
        if sum(per_node) >= req.ranks:
            return None
        big = max(self.nodes, key=lambda n: (len(n.cores), len(n.gpus), n.memory))
        where = "the largest node" if len(self.nodes) > 1 else "the only node"
        return f"it asks for {req.describe()}, but {where} is {big.describe()}" + (
            f" (and there are {len(self.nodes)} nodes)" if len(self.nodes) > 1 else ""
        )

    # -- changes --------------------------------------------------------------------------
    def allocate(self, req: Request, avoid: frozenset[int] = frozenset()) -> Placement | None:
        """Place all ranks on one node if possible, else spread them; None if it does not fit."""
        if self.rooms is not None and req.ranks == 1 and req.cpus > 0:
            i = self._room(req, avoid)
            return None if i is None else Placement((self._take(i, req, 1),))
        counts: list[tuple[int, int]] = []
        for i in range(len(self.nodes)):
            if i in avoid:
                continue
            n = self._ranks_fitting(i, req)
            if n >= req.ranks:
                counts = [(i, req.ranks)]
                break
            if n:
                counts.append((i, n))
        if sum(k for _, k in counts) < req.ranks:
            return None
        slots = []
        left = req.ranks
        for i, k in counts:
            k = min(k, left)
            left -= k
            slots.append(self._take(i, req, k))
            if not left:
                break
        return Placement(tuple(slots))

    def _take(self, i: int, req: Request, ranks: int) -> Slot:
        f = self.free[i]
        if self.rooms is not None:
            self._leave(i, f.ncores, f.ngpus)
        cores, taken = _take(f.cores, req.cpus * ranks)
        f.cores &= ~taken
        f.ncores -= len(cores)
        gpus: tuple[int, ...] = ()
        if req.gpus:
            gpus, taken = _take(f.gpus, req.gpus * ranks)
            f.gpus &= ~taken
            f.ngpus -= len(gpus)
            self.idle_gpus -= len(gpus)
        mem = req.memory * ranks if self.nodes[i].memory else 0
        f.memory -= mem
        if self.rooms is not None:
            self._enter(i, f.ncores, f.ngpus)
        return Slot(i, cores, gpus, mem, ranks)

    def release(self, placement: Placement) -> None:
        for s in placement.slots:
            f = self.free[s.node]
            cores, gpus = _bits(s.cores), _bits(s.gpus)
            if f.cores & cores or f.gpus & gpus:
                raise AssertionError(f"releasing resources that are already free: {s}")
            if self.rooms is not None:
                self._leave(s.node, f.ncores, f.ngpus)
            f.cores |= cores
            f.gpus |= gpus
            f.ncores += len(s.cores)
            f.ngpus += len(s.gpus)
            self.idle_gpus += len(s.gpus)
            f.memory += s.memory
            if self.rooms is not None:
                self._enter(s.node, f.ncores, f.ngpus)

    # -- accounting -----------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        return {
            "cores": sum(len(n.cores) for n in self.nodes),
            "gpus": sum(len(n.gpus) for n in self.nodes),
            "free_cores": sum(f.ncores for f in self.free),
            "free_gpus": sum(f.ngpus for f in self.free),
        }

    def check(self, placements: Sequence[Placement]) -> None:
        """Assert that held placements and free resources add up to capacity, with no overlap."""
        assert self.idle_gpus == sum(f.ngpus for f in self.free), "the idle GPU count is off"
        if self.rooms is not None:
            for i, f in enumerate(self.free):
                assert i in self.rooms[f.ngpus][f.ncores], f"node {i} is misfiled in the index"
            for g, row in enumerate(self.rooms):
                assert self.top[g] == max((c for c, r in enumerate(row) if r), default=-1)
        for i, node in enumerate(self.nodes):
            f = self.free[i]
            held_c = held_g = 0
            mem = 0
            for p in placements:
                for s in p.slots:
                    if s.node != i:
                        continue
                    c, g = _bits(s.cores), _bits(s.gpus)
                    assert not held_c & c and not held_g & g, f"overlapping placements on node {i}"
                    held_c |= c
                    held_g |= g
                    mem += s.memory
            assert held_c & f.cores == 0, f"a held core is also free on node {i}"
            assert held_c | f.cores == _bits(node.cores), f"cores do not add up on node {i}"
            assert held_g | f.gpus == _bits(node.gpus), f"GPUs do not add up on node {i}"
            assert f.ncores == bin(f.cores).count("1") and f.ngpus == bin(f.gpus).count("1"), (
                f"free core or GPU counts do not match the free masks on node {i}"
            )
            if node.memory:
                assert mem + f.memory == node.memory, f"memory does not add up on node {i}"
