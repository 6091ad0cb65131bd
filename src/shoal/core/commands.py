"""What comes out of the core: commands, named in the imperative (what to do).

Every command carries ``cause``, the label of the stimulus that led to it. The runtime persists
every :class:`Transition` and :class:`Born` of a ``handle()`` call before it carries out any
:class:`Dispatch` or :class:`Kill` (persist first, then act).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shoal.core.resources import Placement
from shoal.core.states import State
from shoal.spec.kinds import KillKind


# -- commands ---------------------------------------------------------------------------------
# Commands are slotted but not frozen: the scheduler makes several per task, and a frozen
# dataclass pays an object.__setattr__ call per field on construction (3-4x slower). Nothing
# mutates them after creation; tests/core checks that handle() returns fresh objects only.
@dataclass(slots=True)
class Command:
    cause: str


@dataclass(slots=True)
class Transition(Command):
    """Persist this state change (the runtime writes all of them before acting on the rest)."""

    task: int
    old: State | None
    new: State
    time: float
    reason: str = ""
    attempt: int = 0


@dataclass(slots=True)
class Born(Command):
    """Persist the first state of new tasks: ``ready`` ones wait for nothing, ``pending``
    ones for other tasks (a transition from no state each, at ``time``). One command for a
    whole submission, before any of its tasks moves on: a Transition each would cost ~100
    bytes a task while a million tasks are submitted."""

    time: float
    ready: list[int]
    pending: list[int]

    def transitions(self) -> list[Transition]:
        """The births one by one, in task order."""
        ready = [Transition(self.cause, t, None, State.READY, self.time) for t in self.ready]
        pending = [Transition(self.cause, t, None, State.PENDING, self.time) for t in self.pending]
        return sorted(ready + pending, key=lambda t: t.task)

    def __len__(self) -> int:
        return len(self.ready) + len(self.pending)


def transitions(commands: Iterable[Command]) -> Iterator[Transition]:
    """Every transition of ``commands``, births (:class:`Born`) one by one, in order."""
    for c in commands:
        if type(c) is Transition:
            yield c
        elif type(c) is Born:
            yield from c.transitions()


@dataclass(slots=True)
class Dispatch(Command):
    """Start attempt ``attempt`` of ``task`` on ``placement``.

    With ``after`` set, the task is queued behind that running task on the same slot and
    starts there when it ends (prefetch); otherwise it starts now. With ``follows`` too, the
    task waits for ``after`` itself (a follower): the backend starts it only if ``after``
    succeeded without a Response, resolving ``after``'s output where it runs, and otherwise
    drops it (the core has then taken it back).
    """

    task: int
    attempt: int
    placement: Placement
    after: int | None = None
    follows: bool = False


@dataclass(slots=True)
class Kill(Command):
    """Stop a running attempt (timeout or cancellation); the backend then reports it failed."""

    task: int
    attempt: int
    reason: str
    kind: KillKind = KillKind.CANCELLED  # TIMEOUT; STOPPED: the run stops, back to ready
