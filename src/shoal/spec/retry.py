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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.errors import DefinitionError
from shoal.spec.kinds import RETRYABLE, Failure
from shoal.spec.request import Request

KINDS = RETRYABLE  # the failure kinds a policy may name in ``on``


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
        if kind in (Failure.CANCELLED, Failure.STOPPED):  # asked for: never retried
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


def make(
    where: str,
    retries: Any = 0,
    backoff: Any = 0.0,
    retry_on: Any = (),
    escalate: Any = None,
) -> Backoff | None:
    """Check the user's retry options and build the policy (None: no retries).

    ``backoff``: seconds (a fixed delay), ``"exp"`` (1 s doubling, 10 % jitter, at most an
    hour), or a dict with ``delay``, ``factor``, ``jitter`` and ``cap``. ``retry_on``: failure
    kinds (error, exit, timeout, crash, lost), exception type names, or exit codes.
    ``escalate``: ``{"timeout": 2.0, "memory": 1.5}`` multiplies them on each retry.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DefinitionError(f"{where}: retries must be a whole number >= 0, got {retries!r}")
    if not retries:
        return None
    spec: dict[str, float] = {}
    if isinstance(backoff, str):
        if backoff != "exp":
            raise DefinitionError(
                f"{where}: backoff={backoff!r}: use seconds, 'exp', or a dict of delay, factor, "
                "jitter and cap"
            )
        spec = {"delay": 1.0, "factor": 2.0, "jitter": 0.1}
    elif isinstance(backoff, Mapping):
        unknown = sorted(set(backoff) - {"delay", "factor", "jitter", "cap"})
        if unknown:
            raise DefinitionError(
                f"{where}: backoff has unknown key(s) {unknown}; keys: delay, factor, jitter, cap"
            )
        spec = {k: _number(where, f"backoff[{k!r}]", v) for k, v in backoff.items()}
    else:
        spec = {"delay": _number(where, "backoff", backoff)}
    if not 0 <= spec.get("jitter", 0.0) <= 1:
        raise DefinitionError(f"{where}: backoff jitter must be between 0 and 1")
    on: set[str | int] = set()
    items: Iterable[Any] = [retry_on] if isinstance(retry_on, str | int) else retry_on
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise DefinitionError(
                f"{where}: retry_on takes kinds ({', '.join(sorted(KINDS))}), exception names "
                f"or exit codes, got {item!r}"
            )
        on.add(item)
    factors = {"timeout": 1.0, "memory": 1.0}
    for key, value in (escalate or {}).items():
        if key not in factors:
            raise DefinitionError(f"{where}: escalate takes 'timeout' and 'memory', got {key!r}")
        factors[key] = _number(where, f"escalate[{key!r}]", value)
    return Backoff(
        retries=retries,
        delay=spec.get("delay", 0.0),
        factor=spec.get("factor", 1.0),
        cap=spec.get("cap", 3600.0),
        jitter=spec.get("jitter", 0.0),
        on=frozenset(on),
        timeout_factor=factors["timeout"],
        memory_factor=factors["memory"],
    )


def _number(where: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefinitionError(f"{where}: {what} must be a number, got {value!r}")
    if value < 0:
        raise DefinitionError(f"{where}: {what} must be >= 0, got {value}")
    return float(value)


def describe(b: Backoff | None) -> dict[str, Any] | None:
    """The policy as JSON-able data (for the store), read back by :func:`undescribe`."""
    if b is None:
        return None
    return {
        "retries": b.retries,
        "delay": b.delay,
        "factor": b.factor,
        "cap": b.cap,
        "jitter": b.jitter,
        "on": sorted(b.on, key=str),
        "timeout_factor": b.timeout_factor,
        "memory_factor": b.memory_factor,
    }


def undescribe(d: dict[str, Any] | None) -> Backoff | None:
    if not d:
        return None
    return Backoff(**{**d, "on": frozenset(d["on"])})


def _hash(task: int, attempt: int) -> float:
    """A number in [0, 1) from (task, attempt): splitmix64, deterministic across runs."""
    x = (task * 0x9E3779B97F4A7C15 + attempt * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x / 2**64
