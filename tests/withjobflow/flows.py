"""jobflow jobs for the tests: each Response field, references at depth, stores, failures.

They live in a module of their own so that the workers import them by name, as a user's
package would be."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jobflow import Flow, JobConfig, Maker, OnMissing, Response, flow, job
from monty.json import MSONable
from pydantic import BaseModel


@job
def add(a: Any, b: Any = 0) -> Any:
    return a + b


@job
def ident(x: Any) -> Any:
    return x


@job
def pair(x: Any) -> dict[str, Any]:
    return {"k": [{"attr": x}], "n": x}


@job
def fail(message: str) -> None:
    raise KeyError(message)


@job
def replace_self(n: int) -> Any:
    """Replace itself with a new call until n reaches 0 (indexes 1..n+1)."""
    if n <= 0:
        return n
    return Response(replace=replace_self(n - 1), output=n)


@job
def replace_flow(n: int) -> Response:
    """Replace with a flow whose output is its last job's."""
    first = add(n, 1)
    second = add(first.output, 2)
    return Response(replace=Flow([first, second], output=second.output))


@job
def replace_flow_without_output(n: int) -> Response:
    return Response(replace=Flow([add(n, 1), add(n, 2)]), output="orig")


@job
def replace_list(n: int) -> list[Any]:
    """Returning jobs means replace (a list: the flow's output is their outputs)."""
    return [add(n, 1), add(n, 2)]


@job
def detour(n: int) -> Response:
    return Response(output=n, detour=add(n, 5))


@job
def addition(n: int) -> Response:
    return Response(output=n, addition=add(n, 100))


@job
def stop_children(n: int) -> Response:
    return Response(output=n, stop_children=True)


@job
def stop_jobflow(n: int) -> Response:
    return Response(output=n, stop_jobflow=True)


@job
def stored(n: int) -> Response:
    return Response(output=n, stored_data={"note": n})


@job(data="data")
def with_blob(n: int) -> dict[str, Any]:
    return {"data": list(range(n)), "n": n}


@job(big="data")
def to_unknown_store(n: int | None) -> dict[str, Any]:
    """Saves ``data`` into the store ``big`` (nothing, when it is None: atomate2's jobs all
    name ``data=``, and save into it only what a Maker asked to keep)."""
    return {"data": None if n is None else [n]}


@job
def where() -> str:
    return os.getcwd()


@dataclasses.dataclass
class Point(MSONable):
    x: Any


class Model(BaseModel):
    v: Any


@job
def in_objects(p: Point, m: Model, t: dict[str, Any]) -> list[Any]:
    return [p.x, m.v, t]


@job
def cpus_seen() -> int:
    return len(os.sched_getaffinity(0))


@job
def become_cpus_seen() -> Response:
    return Response(replace=cpus_seen())


@dataclasses.dataclass
class AddMaker(Maker):
    name: str = "add maker"
    b: int = 1

    @job
    def make(self, a: int) -> int:
        return a + self.b


def every_response() -> tuple[Flow, dict[str, Any]]:
    """A flow with each Response field and references to what each made."""
    a = add(1, 2)
    b = add(a.output, 3)
    r = replace_self(2)
    c = add(r.output, 10)
    g = replace_flow(1)
    h = add(g.output, 100)
    w = replace_flow_without_output(1)
    x = ident(w.output)
    lst = replace_list(1)
    y = ident(lst.output)
    d = detour(7)
    e = add(d.output, 1)
    ad = addition(3)
    f = add(ad.output, 1)
    s = stored(5)
    jobs = dict(a=a, b=b, r=r, c=c, g=g, h=h, w=w, x=x, lst=lst, y=y, d=d, e=e, ad=ad, f=f, s=s)
    return Flow(list(jobs.values()), name="every"), jobs


@job
def nap(x: Any, seconds: float) -> Any:
    import time

    time.sleep(seconds)
    return x


def slow_and_dynamic() -> Flow:
    """Every Response field behind a chain of naps: a kill lands while it runs."""
    flow, jobs = every_response()
    first = nap(jobs["a"].output, 0.4)
    second = nap(first.output, 0.4)
    late = replace_self(second.output)
    after = add(late.output, 1)
    detoured = detour(second.output)
    return Flow([flow, first, second, late, after, detoured], name="slow")


@job(config=JobConfig(on_missing_references=OnMissing.NONE))
def collect_none(*values: Any) -> list[Any]:
    return list(values)


@job(config=JobConfig(on_missing_references=OnMissing.PASS))
def collect_pass(*values: Any) -> list[str]:
    return [type(v).__name__ for v in values]


@job(config=JobConfig(expose_store=True))
def look_up(after: Any, uuid: str) -> Any:
    """The newest output of job ``uuid`` as the store the job is given holds it (``after``:
    a job to run after, whose output is not used)."""
    from jobflow import CURRENT_JOB

    return CURRENT_JOB.store.get_output(uuid)


@job
def wait_for(path: str) -> str:
    """Return once ``path`` exists."""
    import time

    while not os.path.exists(path):
        time.sleep(0.02)
    return path


@job(config=JobConfig(resolve_references=False))
def kind_of(x: Any) -> str:
    """The type of what the job was given: a reference, not resolved."""
    return type(x).__name__


@flow
def two_adds(n: int) -> Any:
    """A flow made by jobflow's ``@flow``: its output is the second job's."""
    first = add(n, 1)
    second = add(first.output, 2)
    return second.output
