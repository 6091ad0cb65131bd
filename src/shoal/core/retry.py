"""Retry policies: whether a failed attempt is tried again, after how long, with what.

A :class:`Backoff` travels in the task's ``TaskInfo``. When an attempt fails, the scheduler
asks :meth:`Backoff.delay` whether to retry: the attempt number must be within ``retries``,
and the failure must match ``on`` (kinds such as ``"timeout"``, ``"lost"``, ``"crash"``,
``"exit"``, ``"error"``; exception type names such as ``"MemoryError"``; exit codes such as
``137``; empty: any failure that is not a cancellation). The delay is ``delay * factor **
(attempt - 1)``, capped at ``cap``, with ``jitter`` spreading it by up to that fraction. The
jitter is a hash of the task id and attempt, not a random draw: the core stays deterministic,
and a replay gives the same schedule.

Escalation: each retry may multiply the timeout (``timeout_factor``) and the memory request
(``memory_factor``), e.g. double the time after a timeout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shoal.core.resources import Request

KINDS = frozenset({"error", "exit", "timeout", "crash", "lost"})


@dataclass(frozen=True, slots=True)
class Backoff:
    retries: int = 0
    delay: float = 0.0
    factor: float = 1.0  # 1: fixed delay; 2: exponential
    cap: float = 3600.0
    jitter: float = 0.0  # 0..1: the delay is spread by up to this fraction
    on: frozenset[str | int] = frozenset()
    timeout_factor: float = 1.0
    memory_factor: float = 1.0

    def matches(self, kind: str, reason: str, code: int | None) -> bool:
        if kind in ("cancelled", "stopped"):
            return False
        if not self.on:
            return True
        if kind in self.on or (code is not None and code in self.on):
            return True
        # Python failures carry "TypeName: message" as their reason.
        name = reason.split(":", 1)[0].strip().rsplit(".", 1)[-1]
        return bool(name) and name in self.on

    def delay_for(
        self, task: int, attempt: int, kind: str, reason: str, code: int | None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None: do not retry."""
        if attempt > self.retries or not self.matches(kind, reason, code):
            return None
        base = min(self.cap, self.delay * self.factor ** (attempt - 1))
        if self.jitter and base > 0:
            spread = (_hash(task, attempt) * 2 - 1) * self.jitter  # in [-jitter, jitter)
            base = max(0.0, base * (1 + spread))
        return base

    def escalate(
        self, request: Request, timeout: float | None, attempt: int
    ) -> tuple[Request, float | None]:
        """The request and timeout of attempt ``attempt + 1``."""
        if self.memory_factor != 1.0 and request.memory:
            request = request._replace(memory=math.ceil(request.memory * self.memory_factor))
        if self.timeout_factor != 1.0 and timeout is not None:
            timeout = timeout * self.timeout_factor
        return request, timeout


def _hash(task: int, attempt: int) -> float:
    """A number in [0, 1) from (task, attempt): splitmix64, deterministic across runs."""
    x = (task * 0x9E3779B97F4A7C15 + attempt * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x / 2**64
