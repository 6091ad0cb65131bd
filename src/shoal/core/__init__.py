"""How to decide: the pure scheduling core.

Nothing in this package performs I/O, reads a clock or draws random numbers. The runtime turns
the world into :mod:`events <shoal.core.events>`, calls :meth:`Scheduler.handle`, persists the
resulting transitions and carries out the commands. Because the core is deterministic, tests
drive it with a fake clock and random event sequences, and check its invariants after each step.

The modules, bottom up (each imports only those above it in this list):

* ``states``: ``State``, the legal ``TRANSITIONS`` and ``EVENT_EDGES`` (which cause may take
  which edge); ``resources``: nodes, placements and the free pool; ``queue``: ready tasks by
  urgency; ``policy``: how a run places tasks;
* ``stimuli`` (in: what happened or was asked), ``commands`` (out: what to do), ``refusals``;
* ``tasks``: the task table, where ``TaskTable.move`` is the one place a state changes;
* ``chains``: attempts in flight, prefetch chains and followers;
* ``placement``: the scheduling pass; ``reopen``: retries, reruns, restores, Responses' gates;
* ``validate``: the invariant checker (validation mode); ``machine``: ``Scheduler.handle``,
  which dispatches each stimulus to its handler through one table.

Rules of the package: no I/O, no clock, no random numbers (tests/test_imports.py checks every
import, inside functions too); an event the core cannot accept changes nothing.

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

from shoal.core.commands import Born, Command, Dispatch, Kill, Transition, transitions
from shoal.core.machine import Scheduler
from shoal.core.policy import Mode, Order, Policy
from shoal.core.refusals import (
    Refused,
    RefusedReport,
    RefusedRequest,
    RefusedResource,
    UnknownEvent,
)
from shoal.core.resources import Node, Placement, Pool, Request, Slot
from shoal.core.states import EVENT_EDGES, TERMINAL, TRANSITIONS, Cause, State
from shoal.core.stimuli import (
    Cancel,
    CancelRequested,
    Failed,
    Rerun,
    RerunRequested,
    Restored,
    Retry,
    RetryRequested,
    Returned,
    Stimulus,
    Stop,
    StopRequested,
    Submitted,
    Succeeded,
    TaskInfo,
    Tick,
)

__all__ = [
    "EVENT_EDGES",
    "TERMINAL",
    "TRANSITIONS",
    "Born",
    "Cancel",
    "CancelRequested",
    "Cause",
    "Command",
    "Dispatch",
    "Failed",
    "Kill",
    "Mode",
    "Node",
    "Order",
    "Placement",
    "Policy",
    "Pool",
    "Refused",
    "RefusedReport",
    "RefusedRequest",
    "RefusedResource",
    "Request",
    "Rerun",
    "RerunRequested",
    "Restored",
    "Retry",
    "RetryRequested",
    "Returned",
    "Scheduler",
    "Slot",
    "State",
    "Stimulus",
    "Stop",
    "StopRequested",
    "Submitted",
    "Succeeded",
    "TaskInfo",
    "Tick",
    "Transition",
    "UnknownEvent",
    "transitions",
]
