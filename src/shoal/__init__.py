"""shoal: high-throughput, adaptive ensembles of simulations on one allocation or one laptop.

    import shoal

    @shoal.task
    def relax(a: float) -> dict: ...

    with shoal.Workflow("eos") as wf:
        points = [relax(a) for a in (3.5, 3.6, 3.7)]

    run = wf.run()
    print(run.result(points[0]))

Names are imported on first use (PEP 562), so that worker processes, which import only the
code that runs tasks, start fast.
"""

from __future__ import annotations

from shoal.lazy import exports

__version__ = "0.1.0"

_WHERE = {
    "BackendError": "shoal.errors",
    "DefinitionError": "shoal.errors",
    "DependencyFailed": "shoal.errors",
    "RequestRefused": "shoal.errors",
    "ResourceError": "shoal.errors",
    "RunInterrupted": "shoal.errors",
    "ShoalError": "shoal.errors",
    "StoreError": "shoal.errors",
    "TaskFailed": "shoal.errors",
    "TaskSkipped": "shoal.errors",
    "Response": "shoal.spec.response",
    "Strategy": "shoal.spec.steer",
    "Event": "shoal.runtime.steering.controller",
    "Controller": "shoal.runtime.steering.controller",
    "Ref": "shoal.spec.refs",
    "TASK_DIR": "shoal.spec.task",
    "Task": "shoal.spec.task",
    "command": "shoal.spec.task",
    "task": "shoal.spec.task",
    "Workflow": "shoal.spec.workflow",
    "current": "shoal.backends.execute",
    "Run": "shoal.runtime.run",
    "run": "shoal.entry",
    "submit": "shoal.entry",
    "resume": "shoal.runtime.api",
    "attach": "shoal.runtime.requests",
}

__all__ = [
    "TASK_DIR",
    "BackendError",
    "Controller",
    "DefinitionError",
    "DependencyFailed",
    "Event",
    "Ref",
    "RequestRefused",
    "ResourceError",
    "Response",
    "Run",
    "RunInterrupted",
    "ShoalError",
    "StoreError",
    "Strategy",
    "Task",
    "TaskFailed",
    "TaskSkipped",
    "Workflow",
    "attach",
    "command",
    "current",
    "resume",
    "run",
    "submit",
    "task",
]
assert sorted(__all__) == sorted(_WHERE)


__getattr__, __dir__ = exports("shoal", _WHERE, globals())


TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from shoal.backends.execute import current
    from shoal.entry import run, submit
    from shoal.errors import (
        BackendError,
        DefinitionError,
        DependencyFailed,
        RequestRefused,
        ResourceError,
        RunInterrupted,
        ShoalError,
        StoreError,
        TaskFailed,
        TaskSkipped,
    )
    from shoal.runtime.api import resume
    from shoal.runtime.requests import attach
    from shoal.runtime.run import Run
    from shoal.runtime.steering.controller import Controller, Event
    from shoal.spec.refs import Ref
    from shoal.spec.response import Response
    from shoal.spec.steer import Strategy
    from shoal.spec.task import TASK_DIR, Task, command, task
    from shoal.spec.workflow import Workflow
