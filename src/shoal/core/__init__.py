"""How to decide: the pure scheduling core.

Nothing in this package performs I/O, reads a clock or draws random numbers. The runtime turns
the world into :mod:`events <shoal.core.events>`, calls :meth:`Scheduler.handle`, persists the
resulting transitions and carries out the commands. Because the core is deterministic, tests
drive it with a fake clock and random event sequences, and check its invariants after each step.
"""

from shoal.core.events import (
    Cancel,
    Command,
    Dispatch,
    Failed,
    Kill,
    Rerun,
    Restored,
    Retry,
    Stimulus,
    Stop,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
    Transition,
)
from shoal.core.machine import Policy, Scheduler
from shoal.core.resources import Node, Placement, Pool, Request, Slot
from shoal.core.states import TERMINAL, TRANSITIONS, State

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Cancel",
    "Command",
    "Dispatch",
    "Failed",
    "Kill",
    "Node",
    "Placement",
    "Policy",
    "Pool",
    "Request",
    "Rerun",
    "Restored",
    "Retry",
    "Scheduler",
    "Slot",
    "State",
    "Stimulus",
    "Stop",
    "Submitted",
    "Succeeded",
    "TaskInfo",
    "Tick",
    "Transition",
]
