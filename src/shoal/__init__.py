"""shoal: high-throughput, adaptive ensembles of simulations on one allocation or one laptop.

import shoal

@shoal.task
def relax(a: float) -> dict: ...

with shoal.Workflow("eos") as wf:
    points = [relax(a) for a in (3.5, 3.6, 3.7)]

run = wf.run()
print(run.result(points[0]))
"""

from shoal.errors import (
    BackendError,
    DefinitionError,
    DependencyFailed,
    ResourceError,
    ShoalError,
    StoreError,
    TaskFailed,
)
from shoal.runtime.api import run, submit
from shoal.runtime.run import Run
from shoal.spec.refs import Ref
from shoal.spec.task import Task, command, task
from shoal.spec.workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "DefinitionError",
    "DependencyFailed",
    "Ref",
    "ResourceError",
    "Run",
    "ShoalError",
    "StoreError",
    "Task",
    "TaskFailed",
    "Workflow",
    "command",
    "run",
    "submit",
    "task",
]
