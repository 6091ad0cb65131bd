"""What to run: tasks, commands, references and workflows, as plain checked data.

The spec layer knows nothing about processes or nodes. ``compile_workflow`` validates a workflow
(references, cycles, serializability) and lowers it (:mod:`shoal.spec.lower`) to
:class:`Record` objects that the store persists and the runtime dispatches.

Names are imported on first use (PEP 562): a worker that reads stored references imports
``shoal.spec.refs`` alone, not the whole layer.

Rules of this package: it is the bottom layer and imports nothing of shoal but ``errors`` and
``lazy``, with one exception, named in tests/test_imports.py: ``Workflow.run()`` and
``Workflow.submit()`` import ``shoal.runtime.api`` when called, so that ``wf.run()`` works.
Closed sets of words (failure kinds, lanes) are enums in ``kinds.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.lazy import exports

_WHERE = {
    "CommandFactory": "shoal.spec.task",
    "Options": "shoal.spec.options",
    "Plan": "shoal.spec.lower",
    "Record": "shoal.spec.lower",
    "Ref": "shoal.spec.refs",
    "StoredRef": "shoal.spec.refs",
    "Task": "shoal.spec.task",
    "TaskFactory": "shoal.spec.task",
    "Workflow": "shoal.spec.workflow",
    "command": "shoal.spec.task",
    "compile_workflow": "shoal.spec.workflow",
    "parse_memory": "shoal.spec.options",
}

__all__ = [
    "CommandFactory",
    "Options",
    "Plan",
    "Record",
    "Ref",
    "StoredRef",
    "Task",
    "TaskFactory",
    "Workflow",
    "command",
    "compile_workflow",
    "parse_memory",
]
assert sorted(__all__) == sorted(_WHERE)

# ``task`` (the decorator) is not exported here: it would shadow the module
# ``shoal.spec.task``. Users write ``shoal.task``.


__getattr__, __dir__ = exports("shoal.spec", _WHERE, globals())


if TYPE_CHECKING:
    from shoal.spec.lower import Plan, Record
    from shoal.spec.options import Options, parse_memory
    from shoal.spec.refs import Ref, StoredRef
    from shoal.spec.task import CommandFactory, Task, TaskFactory, command
    from shoal.spec.workflow import Workflow, compile_workflow
