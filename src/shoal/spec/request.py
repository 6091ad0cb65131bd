"""The resource shape of one task: what the scheduler places and the retry policy scales."""

from __future__ import annotations

from typing import NamedTuple


class Request(NamedTuple):
    """What one task needs: ``ranks`` ranks of ``cpus`` cores, ``gpus`` GPUs and ``memory`` MB each.

    A NamedTuple rather than a dataclass: it keys the scheduler's per-shape queues, and tuple
    hashing and equality run in C.
    """

    cpus: int = 1
    gpus: int = 0
    ranks: int = 1
    memory: int = 0

    def describe(self) -> str:
        parts = [f"{self.cpus} core{'s' * (self.cpus != 1)}"]
        if self.gpus:
            parts.append(f"{self.gpus} GPU{'s' * (self.gpus != 1)}")
        if self.memory:
            parts.append(f"{self.memory} MB")
        each = " + ".join(parts)
        return f"{self.ranks} ranks × ({each})" if self.ranks > 1 else each
