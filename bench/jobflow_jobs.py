"""The jobs of bench/jobflow_runs.py, in a module of their own so that workers import them."""

from __future__ import annotations

import time
from typing import Any

from jobflow import job


@job
def noop(i: int) -> int:
    return i


@job
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job
def stamp(previous: Any) -> dict[str, float]:
    """When this job began and ended (its child measures the gap)."""
    start = time.time()
    return {"start": start, "end": time.time()}
