"""What to run: tasks, commands, references and workflows, as plain checked data.

The spec layer knows nothing about processes or nodes. ``compile_workflow`` validates a workflow
(references, cycles, serializability) and lowers it to :class:`Record` objects that the store
persists and the runtime dispatches.
"""

from shoal.spec.options import Options, parse_memory
from shoal.spec.refs import Ref, StoredRef
from shoal.spec.task import CommandFactory, Task, TaskFactory, command
from shoal.spec.workflow import Plan, Record, Workflow, compile_workflow

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

# ``task`` (the decorator) is not re-exported here: it would shadow the module
# ``shoal.spec.task``. Users write ``shoal.task``.
