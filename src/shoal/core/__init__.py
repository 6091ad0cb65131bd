"""How to decide: the pure scheduling core.

Nothing in this package performs I/O, reads a clock or draws random numbers. The runtime turns
the world into :mod:`events <shoal.core.events>`, calls :meth:`Scheduler.handle`, persists the
resulting transitions and carries out the commands. Because the core is deterministic, tests
drive it with a fake clock and random event sequences, and check its invariants after each step.

The contract (docs/contract.md):

* Validation mode (``Scheduler(..., validate=True)`` or ``SHOAL_VALIDATE=1``, on in every
  test): each ``handle()`` ends with ``Scheduler.validate()``, which checks every invariant
  (:mod:`shoal.core.validate`); off, it costs one attribute test per call.
* An event the core cannot accept changes nothing: it raises :class:`Refused`
  (``RefusedReport`` for a backend's impossible report, ``RefusedRequest``/``RefusedResource``
  for requests, which are ``DefinitionError``/``ResourceError``) carrying the event, its task
  and attempt, and the commands of the events before it in the call, which keep their effect.
* The runtime records an internal error (a refused report included) as a ``crashed`` run with
  its reason and traceback; ``shoal resume`` carries on from the store.
"""

from shoal.core.events import (
    Cancel,
    Command,
    Dispatch,
    Failed,
    Kill,
    Refused,
    RefusedReport,
    RefusedRequest,
    RefusedResource,
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
    "Refused",
    "RefusedReport",
    "RefusedRequest",
    "RefusedResource",
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
