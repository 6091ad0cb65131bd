"""Helpers for examples/ising.yaml: read the anneal runs and locate the specific-heat peak."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any


def peak(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The temperature where the seed-averaged specific heat is largest.

    ``runs`` are the outputs of the command tasks: ``{"returncode", "stdout", "dir"}``; each
    stdout holds the JSON line that ``scripts/anneal.py`` prints.
    """
    heat: dict[float, list[float]] = defaultdict(list)
    for r in runs:
        data = json.loads(r["stdout"].strip().splitlines()[-1])
        heat[float(data["T"])].append(float(data["specific_heat"]))
    mean = {T: sum(v) / len(v) for T, v in sorted(heat.items())}
    tc = max(mean, key=lambda T: mean[T])
    return {"Tc": tc, "specific_heat": mean, "runs": len(runs)}
