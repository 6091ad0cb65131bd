"""Random jobflow flows, checked against jobflow's own ``run_locally`` (the reference).

``generate(seed)`` makes a flow of 15-40 ``mix`` jobs, each referring to the outputs of up to
three earlier ones (whole, or an attribute chain into a list), each of a random kind: a plain
value, a failure, a replace chain, a replace by a flow with and without an output, a list of
jobs (a replace), a detour, an addition, ``stop_children``, an additional-store blob, a job
that tolerates failed inputs (``on_missing_references`` NONE), a job that reads the output of
a job two steps up through the store it is given (``expose_store``). The
test runs a deep copy with jobflow and one with shoal (random backend options) and compares
the two JobStores (compare.same).

    python -m pytest tests/withjobflow/test_random_flows.py
"""

from __future__ import annotations

import random
from typing import Any

from jobflow import Flow, JobConfig, OnMissing, Response, job

KINDS = (
    "plain",
    "plain",
    "plain",
    "fail",
    "replace",
    "replace_flow",
    "replace_noout",
    "list",
    "detour",
    "addition",
    "stop",
    "blob",
    "gather",
    "look",
)


def number(value: Any) -> int:
    """The sum of the integers in ``value`` (nested lists and dicts): every kind of output
    feeds every other."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return sum(number(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(number(v) for v in value)
    return 0


@job
def mix(kind: str, depth: int, *values: Any) -> Any:
    v = number(values)
    if kind == "fail":
        raise ValueError(f"failing on purpose with {v}")
    if kind == "replace" and depth > 0:
        return Response(replace=mix("replace", depth - 1, v, 1), output=v)
    if kind == "replace_flow":
        first = mix("plain", 0, v)
        second = mix("plain", 0, first.output, 1)
        return Response(replace=Flow([first, second], output=second.output), output=v)
    if kind == "replace_noout":
        return Response(replace=Flow([mix("plain", 0, v, 2)]), output=v)
    if kind == "list":
        return [mix("plain", 0, v), mix("plain", 0, v, 1)]
    if kind == "detour":
        return Response(output=v, detour=mix("plain", 0, v, 2))
    if kind == "addition":
        return Response(output=v, addition=mix("plain", 0, v, 3))
    if kind == "stop":
        return Response(output=v, stop_children=True)
    return v + 1


@job(data="blob")
def blob(*values: Any) -> dict[str, Any]:
    v = number(values)
    return {"blob": list(range(v % 5 + 1)), "v": v}


@job(config=JobConfig(on_missing_references=OnMissing.NONE))
def gather(*values: Any) -> int:
    """Runs when a job it refers to failed, reading None for it."""
    return number(values) + sum(v is None for v in values)


@job(config=JobConfig(expose_store=True))
def look(uuid: str, *values: Any) -> int:
    """Reads job ``uuid``'s newest output (not one of its inputs) from ``CURRENT_JOB.store``."""
    from jobflow import CURRENT_JOB

    return number(values) + number(CURRENT_JOB.store.get_output(uuid))


def generate(seed: int) -> Flow:
    rng = random.Random(seed)
    jobs: list[Any] = []
    roots: list[Any] = []
    for _ in range(rng.randint(15, 40)):
        kind = rng.choice(KINDS)
        if kind == "fail" and rng.random() < 0.5:
            kind = "plain"
        inputs: list[Any] = []
        # gather refers to jobs without inputs only: a failure it meets is its parent's own
        # (below a job that never ran, jobflow's run_locally runs it, jobflow-remote and
        # shoal do not)
        pool = roots if kind == "gather" else jobs
        for parent in rng.sample(pool, min(len(pool), rng.randint(0, 3))):
            ref = parent.output
            if parent.name == "blob" and rng.random() < 0.5:
                ref = ref["blob"]  # a reference into an additional store
            inputs.append(ref)
        above = sorted({u for ref in inputs for u in _owner(jobs, ref).input_uuids})
        if kind == "look" and not above:
            kind = "plain"  # nothing two steps up
        if kind == "look":
            jobs.append(look(rng.choice(above), *inputs))
        elif kind == "blob":
            jobs.append(blob(*inputs))
        elif kind == "gather":
            jobs.append(gather(*inputs))
        else:
            jobs.append(mix(kind, rng.randint(0, 3), *inputs))
        if not inputs and kind not in ("gather", "blob"):
            roots.append(jobs[-1])
    return Flow(jobs, name=f"random-{seed}")


def _owner(jobs: list[Any], ref: Any) -> Any:
    """The job whose output ``ref`` refers to."""
    return next(j for j in jobs if j.uuid == ref.uuid)
