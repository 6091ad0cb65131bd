"""Events (what happened) go into the core; commands (what to do) come out.

Events are frozen, slotted dataclasses; commands are slotted (see below). Every event carries
``now``, the time at which the runtime observed it: the core never reads a clock. Every command
carries ``cause``, a short label of the event that led to it, so the story of any task can be
told from the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.resources import Placement, Request
from shoal.core.states import IllegalTransition, State
from shoal.errors import DefinitionError, ResourceError
from shoal.spec.retry import Backoff

DEFAULT = Request()


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The core's view of a task: what it waits for, what it needs, how urgent it is."""

    id: int
    deps: tuple[int, ...] = ()
    request: Request = DEFAULT
    priority: int = 0
    timeout: float | None = None
    # The backend queue ("lane") that can hold this task behind a running task of the same
    # lane, e.g. "pool" (workers) or "process" (process chains); None: never queued.
    prefetch: str | None = None
    retry: Backoff | None = None  # what to do when an attempt fails (None: it fails)
    estimate: float = 0.0  # expected seconds of run time (0: unknown); see queue.urgency
    # It may follow: be queued behind the one task it still waits for, on that task's slot,
    # before that task ends (Policy.follow; the backend starts it only after that success).
    follow: bool = False


# -- events -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stimulus:
    now: float

    def label(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True, slots=True)
class Submitted(Stimulus):
    """New tasks join the run (the initial workflow, or work added later)."""

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

    task: int
    attempt: int
    reason: str
    kind: str = "error"
    code: int | None = None  # the exit code, for commands

    def label(self) -> str:
        return f"failed(task {self.task}, attempt {self.attempt}, {self.kind})"


@dataclass(frozen=True, slots=True)
class Returned(Stimulus):
    """The backend gives an attempt back unstarted (its slot was lost); it is ready again."""

    task: int
    attempt: int

    def label(self) -> str:
        return f"returned(task {self.task}, attempt {self.attempt})"


@dataclass(frozen=True, slots=True)
class Cancel(Stimulus):
    """Someone asked for a task to be cancelled (and with it, everything downstream)."""

    task: int
    reason: str = "cancelled by request"

    def label(self) -> str:
        return f"cancel(task {self.task})"


@dataclass(frozen=True, slots=True)
class Retry(Stimulus):
    """Reopen a failed or cancelled task for a new attempt, optionally with a new ``info``
    (more cores, more time); the tasks downstream that ended because of it reopen with it."""

    task: int
    info: TaskInfo | None = None
    reason: str = "retried by request"

    def label(self) -> str:
        return f"retry(task {self.task})"


@dataclass(frozen=True, slots=True)
class Rerun(Stimulus):
    """Run a finished task again (a new attempt); with ``downstream``, the tasks that depend
    on it, directly or not, run again after it."""

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

    tasks: tuple[TaskInfo, ...]
    states: tuple[State, ...]
    attempts: tuple[int, ...]
    gates: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def label(self) -> str:
        return f"restored({len(self.tasks)} tasks)"


@dataclass(frozen=True, slots=True)
class Stop(Stimulus):
    """Start nothing new from now on. With ``drain`` running tasks finish; without, they are
    stopped and go back to ready (they did not fail, so a later resume runs them again)."""

    drain: bool = True
    reason: str = "stopped by request"

    def label(self) -> str:
        return "stop"


@dataclass(frozen=True, slots=True)
class Tick(Stimulus):
    """Time passed: check timeouts and waiting tasks."""


@dataclass(slots=True)
class Outcome:
    """What a backend reported about an attempt: the data behind a Succeeded or Failed event."""

    task: int
    attempt: int
    ok: bool
    started: float | None = None
    ended: float | None = None
    kind: str = ""
    error: str = ""
    exit_code: int | None = None
    worker: str = ""
    result: bytes | None = None  # pickled return value (None for failures)
    returned: bool = False  # given back unstarted: neither success nor failure

    @classmethod
    def unstarted(cls, task: int, attempt: int, ended: float, kind: str, error: str) -> Outcome:
        """A failure of an attempt that never started (cancelled while queued, refused)."""
        return cls(task, attempt, False, None, ended, kind, error)


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
    kind: str = "cancelled"  # or "timeout", or "stopped" (the run stops: back to ready)


# -- refusals ---------------------------------------------------------------------------------
class Refused(Exception):
    """``Scheduler.handle`` did not accept ``event``; the scheduler is exactly as it was before it.

    Every event is checked before it changes anything. The events before it in the same call
    took effect (with their scheduling pass): ``commands`` are theirs, and the caller must
    carry them out as if ``handle`` had returned them. The events after it were not looked at.
    ``task`` and ``attempt`` are the event's (None when it has none). A refusal is raised, not
    returned as a command, so that no caller can overlook it: it is either a request the
    caller must answer (:class:`RefusedRequest`, a :class:`~shoal.errors.DefinitionError`) or
    a report that contradicts the core (:class:`RefusedReport`, a bug in a backend)."""

    def __init__(self, message: str, event: Stimulus | None = None) -> None:
        super().__init__(message)
        self.event = event
        self.task: int | None = getattr(event, "task", None)
        self.attempt: int | None = getattr(event, "attempt", None)
        self.commands: list[Command] = []


class RefusedReport(Refused, IllegalTransition):
    """A backend reported something the core's state rules out (an outcome of an attempt that
    is still queued behind another): the backend broke its contract. The runtime records the
    run as crashed (resumable): going on would wait for an outcome already given."""


class RefusedRequest(Refused, DefinitionError):
    """A request (submission, cancel, retry, rerun, restore, a Response's added work) that
    cannot be done as asked: unknown or duplicate ids, a cycle, the wrong state."""


class RefusedResource(RefusedRequest, ResourceError):
    """A request for resources that no node can ever hold."""


class UnknownEvent(Refused, TypeError):
    """Something that is not an event the scheduler knows."""
