"""What goes into the core: stimuli, named in the past tense (what happened or was asked).

Stimuli are frozen, slotted dataclasses. Every one carries ``now``, the time at which the
runtime observed it: the core never reads a clock. Its ``label()`` becomes the ``cause`` of the
commands it leads to (:mod:`shoal.core.commands`), so the story of any task can be told from
the store. Requests from people and rules (``CancelRequested`` ...) are stimuli too: the core
may refuse them (:mod:`shoal.core.refusals`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from shoal.core.resources import Request
from shoal.core.states import Cause, State
from shoal.spec.kinds import Failure, Lane
from shoal.spec.retry import Backoff

DEFAULT = Request()


@dataclass(frozen=True, slots=True)
class Shape:
    """What a task needs and how it is handled, shared by the tasks that agree on all of it
    (a million tasks have a few): see :class:`TaskInfo`."""

    request: Request = DEFAULT
    priority: int = 0
    timeout: float | None = None
    # The backend queue that can hold this task behind a running task of the same lane
    # (Lane.POOL: workers, Lane.PROCESS: process chains); None: it is never queued.
    lane: Lane | None = None
    retry: Backoff | None = None  # what to do when an attempt fails (None: it fails)
    estimate: float = 0.0  # expected seconds of run time (0: unknown); see ready.urgency
    # It may follow: be queued behind the one task it still waits for, on that task's slot,
    # before that task ends (Policy.follow; the backend starts it only after that success).
    follow: bool = False
    # It runs even when a task it depends on failed (Options.tolerate): a FAILED dependency
    # counts as met for it (TaskTable.met). One that never ran still ends it.
    tolerate: bool = False


class TaskInfo:
    """The core's view of a task: what it waits for (``deps``) and its :class:`Shape`, whose
    fields read as the task's own (``info.request`` ...). Built from the shape's fields, or
    with a shared ``shape`` (:meth:`of`): a task then costs 56 bytes here, not 112. Immutable:
    :meth:`but` makes a changed copy."""

    __slots__ = ("deps", "id", "shape")

    id: int
    deps: tuple[int, ...]
    shape: Shape

    def __init__(
        self,
        id: int,
        deps: tuple[int, ...] = (),
        request: Request = DEFAULT,
        priority: int = 0,
        timeout: float | None = None,
        lane: Lane | None = None,
        retry: Backoff | None = None,
        estimate: float = 0.0,
        follow: bool = False,
        tolerate: bool = False,
    ) -> None:
        shape = Shape(request, priority, timeout, lane, retry, estimate, follow, tolerate)
        _set(self, "id", id)
        _set(self, "deps", deps)
        _set(self, "shape", shape)

    @classmethod
    def of(cls, id: int, deps: tuple[int, ...], shape: Shape) -> TaskInfo:
        info = cls.__new__(cls)
        _set(info, "id", id)
        _set(info, "deps", deps)
        _set(info, "shape", shape)
        return info

    def but(self, **changes: Any) -> TaskInfo:
        """A copy with these fields of the shape changed."""
        return TaskInfo.of(self.id, self.deps, replace(self.shape, **changes))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TaskInfo is immutable; use .but({name}=...) for a changed copy")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskInfo):
            return NotImplemented
        return (self.id, self.deps, self.shape) == (other.id, other.deps, other.shape)

    def __hash__(self) -> int:
        return hash((self.id, self.deps, self.shape))

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self.shape, f.name)!r}"
            for f in dataclasses.fields(Shape)
            if getattr(self.shape, f.name) != f.default
        )
        return f"TaskInfo(id={self.id}, deps={self.deps}" + (f", {fields})" if fields else ")")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskInfo.of, (self.id, self.deps, self.shape))

    @property
    def request(self) -> Request:
        return self.shape.request

    @property
    def priority(self) -> int:
        return self.shape.priority

    @property
    def timeout(self) -> float | None:
        return self.shape.timeout

    @property
    def lane(self) -> Lane | None:
        return self.shape.lane

    @property
    def retry(self) -> Backoff | None:
        return self.shape.retry

    @property
    def estimate(self) -> float:
        return self.shape.estimate

    @property
    def follow(self) -> bool:
        return self.shape.follow

    @property
    def tolerate(self) -> bool:
        return self.shape.tolerate


_set = object.__setattr__


# -- stimuli -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stimulus:
    now: float
    cause: ClassVar[Cause]  # what it is, for EVENT_EDGES (core/states.py)

    def label(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True, slots=True)
class Submitted(Stimulus):
    """New tasks join the run (the initial workflow, or work added later)."""

    cause: ClassVar[Cause] = Cause.SUBMITTED

    tasks: tuple[TaskInfo, ...]

    def label(self) -> str:
        return f"submitted({len(self.tasks)} tasks)"


@dataclass(frozen=True, slots=True)
class Succeeded(Stimulus):
    """An attempt finished without error.

    A task that returned a Response brings the work it asks for, handled in the same step:
    ``add`` (new tasks, which may depend on this one), ``gate`` (ids of tasks that this task's
    dependents must now also wait for: a detour, or a replacement) and ``skip`` (this task's
    dependents end as skipped).
    """

    cause: ClassVar[Cause] = Cause.SUCCEEDED

    task: int
    attempt: int
    add: tuple[TaskInfo, ...] = ()
    gate: tuple[int, ...] = ()
    skip: bool = False
    response: bool = False  # it returned a Response (the backend runs no follower after it)

    def label(self) -> str:
        return f"succeeded(task {self.task}, attempt {self.attempt})"


@dataclass(frozen=True, slots=True)
class Failed(Stimulus):
    """An attempt failed; ``kind`` is error, exit, timeout, crash, lost or cancelled."""

    cause: ClassVar[Cause] = Cause.FAILED

    task: int
    attempt: int
    reason: str
    kind: Failure = Failure.ERROR
    code: int | None = None  # the exit code, for commands

    def label(self) -> str:
        return f"failed(task {self.task}, attempt {self.attempt}, {self.kind})"


@dataclass(frozen=True, slots=True)
class Returned(Stimulus):
    """The backend gives an attempt back unstarted (its slot was lost); it is ready again."""

    cause: ClassVar[Cause] = Cause.RETURNED

    task: int
    attempt: int

    def label(self) -> str:
        return f"returned(task {self.task}, attempt {self.attempt})"


@dataclass(frozen=True, slots=True)
class CancelRequested(Stimulus):
    """Someone asked for a task to be cancelled (and with it, everything downstream)."""

    cause: ClassVar[Cause] = Cause.CANCEL_REQUESTED

    task: int
    reason: str = "cancelled by request"

    def label(self) -> str:
        return f"cancel(task {self.task})"


@dataclass(frozen=True, slots=True)
class RetryRequested(Stimulus):
    """Reopen a failed or cancelled task for a new attempt, optionally with a new ``info``
    (more cores, more time); the tasks downstream that ended because of it reopen with it."""

    cause: ClassVar[Cause] = Cause.RETRY_REQUESTED

    task: int
    info: TaskInfo | None = None
    reason: str = "retried by request"

    def label(self) -> str:
        return f"retry(task {self.task})"


@dataclass(frozen=True, slots=True)
class RerunRequested(Stimulus):
    """Run a finished task again (a new attempt); with ``downstream``, the tasks that depend
    on it, directly or not, run again after it."""

    cause: ClassVar[Cause] = Cause.RERUN_REQUESTED

    task: int
    downstream: bool = False
    reason: str = "rerun by request"

    def label(self) -> str:
        return f"rerun(task {self.task})"


@dataclass(frozen=True, slots=True)
class Restored(Stimulus):
    """A resumed run's tasks, with the state and attempt count the store recorded.

    Finished tasks keep their state; the others are made ready or pending afresh (a task that
    was running lost its attempt). ``gates`` are the extra dependencies Responses added:
    ``(task, (gate ids...))``.
    """

    cause: ClassVar[Cause] = Cause.RESTORED

    tasks: tuple[TaskInfo, ...]
    states: tuple[State, ...]
    attempts: tuple[int, ...]
    gates: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def label(self) -> str:
        return f"restored({len(self.tasks)} tasks)"


@dataclass(frozen=True, slots=True)
class StopRequested(Stimulus):
    """Start nothing new from now on. With ``drain`` running tasks finish; without, they are
    stopped and go back to ready (they did not fail, so a later resume runs them again)."""

    cause: ClassVar[Cause] = Cause.STOP_REQUESTED

    drain: bool = True
    reason: str = "stopped by request"

    def label(self) -> str:
        return "stop"


@dataclass(frozen=True, slots=True)
class Tick(Stimulus):
    """Time passed: check timeouts and waiting tasks."""

    cause: ClassVar[Cause] = Cause.TICK


# The names these requests had before they were named as stimuli (deprecated aliases).
Cancel = CancelRequested
Retry = RetryRequested
Rerun = RerunRequested
Stop = StopRequested
