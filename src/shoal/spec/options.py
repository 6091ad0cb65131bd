"""Task options (resources, limits, priority, tags), checked at the boundary."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from shoal.errors import DefinitionError, hint
from shoal.spec.request import Request
from shoal.spec.retry import Backoff
from shoal.spec.retry import make as make_retry

RETRY_KEYS = ("retries", "backoff", "retry_on", "escalate")

__all__ = ["RETRY_KEYS", "Options", "Request", "parse_memory"]  # Request: from spec.request


_UNITS = {"": 1, "k": 1e-3, "m": 1, "g": 1024, "t": 1024 * 1024}
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_memory(value: int | float | str | None) -> int:
    """Memory in MB: a number is MB; strings like ``"4GB"``, ``"512M"``, ``"2GiB"`` are parsed."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise DefinitionError(f"memory must be a size like 4096 (MB) or '4GB', not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DefinitionError(f"memory must be a size in MB, not negative or NaN; got {value}")
        return math.ceil(value)
    m = _MEM.match(str(value))
    if not m:
        raise DefinitionError(
            f"cannot read memory {value!r}: use a number of MB or a size like '512MB' or '4GB'"
        )
    return math.ceil(float(m.group(1)) * _UNITS[m.group(2).lower()])  # 512KB -> 1 MB, not 0


@dataclass(frozen=True, slots=True)
class Options:
    """Per-task options. ``cpus`` and ``gpus`` are per rank; ``memory`` is MB per rank."""

    name: str | None = None
    cpus: int = 1
    gpus: int = 0
    ranks: int = 1
    memory: int = 0
    timeout: float | None = None
    priority: int = 0
    tags: tuple[str, ...] = ()
    isolate: bool | None = None
    retry: Backoff | None = None  # built from retries=, backoff=, retry_on=, escalate=
    # Expected seconds of run time, if known roughly: among ready tasks of equal priority the
    # longer ones start first, so that the slowest are not the last to finish.
    estimate: float | None = None
    # It runs even when a task it depends on failed (that task's output then reads as None):
    # a task that collects what it can (jobflow's on_missing_references NONE or PASS). A task
    # upstream that never ran (dep_failed, cancelled, skipped) still ends it.
    tolerate: bool = False

    @property
    def request(self) -> Request:
        return Request(self.cpus, self.gpus, self.ranks, self.memory)

    def merged(self, where: str, **changes: Any) -> Options:
        """A copy with ``changes`` applied and checked; ``where`` names the caller in errors."""
        policy = {k: changes.pop(k) for k in RETRY_KEYS if k in changes}
        if policy:
            old = self.retry
            base = {
                "retries": old.retries if old else 0,
                "backoff": {
                    "delay": old.delay,
                    "factor": old.factor,
                    "cap": old.cap,
                    "jitter": old.jitter,
                }
                if old
                else 0.0,
                "retry_on": tuple(old.on) if old else (),
                "escalate": {"timeout": old.timeout_factor, "memory": old.memory_factor}
                if old
                else None,
            }
            changes["retry"] = make_retry(where, **{**base, **policy})
        known = ({f.name for f in fields(self)} - {"retry"}) | set(RETRY_KEYS) | {"retry"}
        unknown = sorted(set(changes) - known)
        if unknown:
            # Like run options: the closest valid name for each misspelt one (errors.hint).
            names = "; ".join(f"unknown option {u!r}{hint(u, known)}" for u in unknown)
            raise DefinitionError(f"{where}: {names}. Options are: {', '.join(sorted(known))}")
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            clean[key] = _check(where, key, value)
        return replace(self, **clean)


def _int(where: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionError(f"{where}: {key} must be an integer, got {value!r}")
    if value < low:
        raise DefinitionError(f"{where}: {key} must be >= {low}, got {value}")
    return value


def _seconds(where: str, key: str, value: Any, what: str) -> float | None:
    """None, or a positive, finite number of seconds."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DefinitionError(
            f"{where}: {key} must be a positive number of seconds{what}, got {value!r}"
        )
    return float(value)


def _check(where: str, key: str, value: Any) -> Any:
    if key in ("cpus", "ranks"):
        return _int(where, key, value, 1)
    if key == "gpus":
        return _int(where, key, value, 0)
    if key == "priority":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DefinitionError(f"{where}: priority must be an integer, got {value!r}")
        return value
    if key == "memory":
        try:
            return parse_memory(value)
        except DefinitionError as err:
            raise DefinitionError(f"{where}: {err}") from None
    if key == "timeout":
        return _seconds(where, key, value, "")
    if key == "estimate":
        return _seconds(where, key, value, " (the expected run time)")
    if key == "tags":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, Iterable) or not all(isinstance(t, str) for t in value):
            raise DefinitionError(f"{where}: tags must be a string or a list of strings")
        return tuple(value)
    if key == "name":
        if value is not None and not isinstance(value, str):
            raise DefinitionError(f"{where}: name must be a string, got {value!r}")
        return value
    if key == "retry":
        return value
    if key == "isolate":
        if value is not None and not isinstance(value, bool):
            raise DefinitionError(f"{where}: isolate must be True or False, got {value!r}")
        return value
    if key == "tolerate":
        if not isinstance(value, bool):
            raise DefinitionError(f"{where}: tolerate must be True or False, got {value!r}")
        return value
    raise AssertionError(key)
