"""``Response``: what a Python task may return to change the run while it goes on.

A task returns ``shoal.Response(output=..., add=..., detour=..., replace=..., stop_children=...,
stop_run=...)`` instead of a plain value. The worker sends it to the driver in a form that keeps
the new tasks whole: :func:`encode` pickles task handles and references among them as
themselves (ordinary pickling turns a handle into a reference to an existing task). The driver
calls :func:`decode`, gets fresh handles, and lowers them like any other work (validation,
ids, the store) before the core sees them.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import Any

from shoal.errors import DefinitionError
from shoal.spec.lower import Pickler, dumps
from shoal.spec.refs import Handle, Ref
from shoal.spec.task import Task, fresh_key
from shoal.spec.workflow import Workflow

Items = list[Task]


class Response:
    """Returned by a task to steer the run. Every field is optional.

    * ``output``: the value references to this task see (default None).
    * ``add``: tasks or workflows added to the run; they may use this task's output
      (``shoal.current().out``). This task's dependents do not wait for them.
    * ``detour``: tasks inserted between this task and its dependents: the dependents start
      only after every detour task succeeded.
    * ``replace``: a task (or workflow, whose last task stands in) replacing this one:
      references to this task resolve to its output and the dependents wait for it. A task
      that replaces itself with a new call of itself makes a loop.
    * ``stop_children``: this task's dependents end as skipped (not failed).
    * ``stop_run``: nothing new starts; running tasks finish and the run ends as stopped.
    """

    __slots__ = ("add", "detour", "output", "replace", "stop_children", "stop_run")

    def __init__(
        self,
        output: Any = None,
        *,
        add: Any = None,
        detour: Any = None,
        replace: Any = None,
        stop_children: bool = False,
        stop_run: bool = False,
    ) -> None:
        self.output = output
        self.add = tasks_of(add, "add")
        self.detour = tasks_of(detour, "detour")
        self.replace = tasks_of(replace, "replace")
        if not isinstance(stop_children, bool) or not isinstance(stop_run, bool):
            raise DefinitionError("Response: stop_children and stop_run must be True or False")
        if stop_children and (self.detour or self.replace):
            raise DefinitionError(
                "Response: stop_children skips the dependents, so a detour or a replacement "
                "would have nothing to lead to; use add= for work that should still run"
            )
        self.stop_children = stop_children
        self.stop_run = stop_run

    @property
    def changes(self) -> bool:
        return bool(self.add or self.detour or self.replace or self.stop_children or self.stop_run)

    def __repr__(self) -> str:
        parts = [f"output={self.output!r}"]
        for name in ("add", "detour", "replace"):
            if getattr(self, name):
                parts.append(f"{name}={len(getattr(self, name))} tasks")
        for name in ("stop_children", "stop_run"):
            if getattr(self, name):
                parts.append(f"{name}=True")
        return f"Response({', '.join(parts)})"


def tasks_of(value: Any, where: str) -> Items:
    """Flatten a task, a workflow, or a list of them into tasks (each once)."""
    if value is None:
        return []
    items: Iterable[Any] = value if isinstance(value, list | tuple) else [value]
    out: Items = []
    seen: set[int] = set()
    for item in items:
        if isinstance(item, Workflow):
            if item.rules or item.strategies:
                raise DefinitionError(
                    f"Response {where}=: workflow {item.name!r} has rules or strategies; "
                    "register those on the workflow that starts the run"
                )
            found = item.tasks
        elif isinstance(item, Task):
            found = [item]
        else:
            raise DefinitionError(
                f"Response {where}= takes tasks or workflows, got {type(item).__name__}"
            )
        for t in found:
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
    return out


# -- the wire form ------------------------------------------------------------------------------
def _rebuild_task(state: dict[str, Any]) -> Task:
    t = Task.__new__(Task)
    for name, value in state.items():
        setattr(t, name, value)
    t.key = fresh_key()  # keys are per process: take one of the driver's
    t.id = None
    return t


def _rebuild_ref(task: Handle, path: tuple[Any, ...]) -> Ref:
    return Ref(task, path)


class _Pickler(Pickler):
    """Pickles task handles and references whole, not as references to stored tasks."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Task:
            state = {n: getattr(obj, n) for n in Task.__slots__ if n not in ("key", "id")}
            return (_rebuild_task, (state,))
        if type(obj) is Ref:
            return (_rebuild_ref, (obj.task, obj.path))
        return super().reducer_override(obj)


def encode(resp: Response) -> bytes:
    """The wire form: the output pickled as a result would be, and the changes whole."""
    output = dumps(resp.output)
    buf = io.BytesIO()
    changes = (resp.add, resp.detour, resp.replace, resp.stop_children, resp.stop_run)
    _Pickler(buf, protocol=5).dump(changes)
    return pickle.dumps((output, buf.getvalue()), protocol=5)


def encode_tasks(tasks: list[Task]) -> bytes:
    """Tasks pickled whole, for another process to add to a run (``shoal.attach``)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(list(tasks))
    return buf.getvalue()


def decode_tasks(data: bytes) -> list[Task]:
    out: list[Task] = pickle.loads(data)
    return out


def decode(data: bytes) -> tuple[bytes, Response]:
    """The output (pickled) and the Response with fresh handles (for the driver)."""
    output, blob = pickle.loads(data)
    add, detour, replace, stop_children, stop_run = pickle.loads(blob)
    resp = Response.__new__(Response)
    resp.output = None
    resp.add, resp.detour, resp.replace = add, detour, replace
    resp.stop_children, resp.stop_run = stop_children, stop_run
    return output, resp
