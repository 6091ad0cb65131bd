"""Task states, the one table of legal transitions between them, and which cause may take
each edge."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """The life of a task. Each member's ``__doc__`` says what it means (from ``DOCS``)."""

    PENDING = "pending"
    READY = "ready"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEP_FAILED = "dep_failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    # Members are singletons, so identity hashing is correct; Enum's own __hash__ is written in
    # Python and was the single largest cost of the scheduler's inner loop.
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# One text per state: it is the member's docstring, and the docs and the CLI show it.
DOCS: dict[State, str] = {
    State.PENDING: "waiting for the tasks it depends on to succeed",
    State.READY: "all dependencies succeeded; queued until resources are free",
    State.QUEUED: (
        "handed to a backend slot behind a running task of the same shape; it starts there "
        "when that task ends and holds no resources until then (a follower waits there for "
        "the one task ahead of it that it depends on, and starts only if that one succeeds)"
    ),
    State.RUNNING: "resources are held and the task was handed to a backend",
    State.RETRYING: (
        "an attempt failed and its retry policy asks for another; it waits out the back-off, "
        "holding no resources"
    ),
    State.SUCCEEDED: "finished without error; its result is stored",
    State.FAILED: "raised, exited non-zero, timed out, crashed or was lost",
    State.DEP_FAILED: "never ran because a task upstream of it failed (the root is recorded)",
    State.CANCELLED: (
        "cancelled on purpose (shoal cancel, attach().cancel, a rule or a strategy), or "
        "downstream of such a task; not a failure: it does not make the run failed"
    ),
    State.SKIPPED: (
        "never ran because a task upstream of it returned a Response with stop_children "
        "(not a failure)"
    ),
}
for _state, _text in DOCS.items():
    _state.__doc__ = _text[0].upper() + _text[1:] + "."

TERMINAL: frozenset[State] = frozenset(
    {State.SUCCEEDED, State.FAILED, State.DEP_FAILED, State.CANCELLED, State.SKIPPED}
)

# Terminal states end a task for good unless someone asks again: a failed or cancelled task
# may be retried (``Retry``), and the tasks downstream that ended because of it go back to
# pending with it; a finished task may be run again (``Rerun``).
TRANSITIONS: dict[State, frozenset[State]] = {
    # pending -> queued: it follows the one task it still waits for (Policy.follow)
    State.PENDING: frozenset(
        {State.READY, State.QUEUED, State.DEP_FAILED, State.CANCELLED, State.SKIPPED}
    ),
    # ready -> pending: a task upstream of it runs again (Rerun) before it started
    State.READY: frozenset({State.RUNNING, State.QUEUED, State.CANCELLED, State.PENDING}),
    # queued -> pending: a follower taken back (the task it followed did not succeed there)
    State.QUEUED: frozenset({State.RUNNING, State.READY, State.PENDING, State.CANCELLED}),
    State.RUNNING: frozenset(
        {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.READY, State.RETRYING}
    ),
    State.RETRYING: frozenset({State.READY, State.CANCELLED}),
    State.SUCCEEDED: frozenset({State.READY, State.PENDING}),
    State.FAILED: frozenset({State.READY, State.PENDING}),
    # dep_failed -> ready: rerun after the task upstream of it was rerun alone and succeeded
    State.DEP_FAILED: frozenset({State.READY, State.PENDING}),
    State.CANCELLED: frozenset({State.READY, State.PENDING}),
    State.SKIPPED: frozenset({State.READY, State.PENDING}),
}


class Cause(enum.Enum):
    """What may move a task: a stimulus of the core (its class names it in ``cause``), or the
    scheduling pass that follows every ``handle()`` call."""

    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETURNED = "returned"
    TICK = "tick"
    CANCEL_REQUESTED = "cancel requested"
    RETRY_REQUESTED = "retry requested"
    RERUN_REQUESTED = "rerun requested"
    STOP_REQUESTED = "stop requested"
    RESTORED = "restored"
    SCHEDULING = "scheduling pass"


def _edges(*pairs: tuple[State, frozenset[State] | State]) -> frozenset[tuple[State, State]]:
    out = set()
    for old, new in pairs:
        for n in new if isinstance(new, frozenset) else (new,):
            out.add((old, n))
    return frozenset(out)


_P, _R, _Q, _RUN, _RET = State.PENDING, State.READY, State.QUEUED, State.RUNNING, State.RETRYING
_ENDED_UPSTREAM = frozenset({State.DEP_FAILED, State.CANCELLED, State.SKIPPED})
_REOPENED = frozenset({_R, _P})
# A task upstream ended, so the pending tasks below it end too (dep_failed, cancelled, skipped).
_DOWNSTREAM = _edges((_P, _ENDED_UPSTREAM))
# A running task ends and the next one queued behind it starts, or its followers go back.
_CHAIN = _edges((_Q, _RUN), (_Q, _P))

# Which cause may take which edge: the scheduler's handlers as data. The stateful test
# (tests/core/test_stateful.py) checks every transition the core emits against it, and the
# state diagram in docs/states.md labels each edge with its causes.
EVENT_EDGES: dict[Cause, frozenset[tuple[State, State]]] = {
    Cause.SCHEDULING: _edges((_R, _RUN), (_R, _Q), (_P, _Q)),
    Cause.SUBMITTED: _DOWNSTREAM,
    Cause.SUCCEEDED: _DOWNSTREAM | _CHAIN | _edges((_RUN, State.SUCCEEDED), (_P, _R)),
    # (pending -> ready: a task that tolerates the failure, Options.tolerate)
    Cause.FAILED: _edges((_P, frozenset({State.DEP_FAILED, State.CANCELLED, _R})))
    | _CHAIN
    | _edges(
        (_RUN, frozenset({State.FAILED, State.CANCELLED, _RET, _R})),
        (_Q, frozenset({_R, State.CANCELLED})),
    ),
    Cause.RETURNED: _edges((_P, State.CANCELLED))
    | _CHAIN
    | _edges((_Q, frozenset({_R, State.CANCELLED})), (_RUN, frozenset({_R, State.CANCELLED}))),
    Cause.TICK: _edges((_RET, _R)),
    Cause.CANCEL_REQUESTED: _edges(
        (_P, State.CANCELLED), (_R, State.CANCELLED), (_RET, State.CANCELLED)
    ),
    # (ready or queued -> pending: a task that tolerated the failure waits for the retry)
    Cause.RETRY_REQUESTED: _edges(
        (_P, State.SKIPPED),
        (_R, _P),
        (_Q, _P),
        (State.FAILED, _REOPENED),
        (State.CANCELLED, _REOPENED),
        (State.DEP_FAILED, _REOPENED),
    ),
    Cause.RERUN_REQUESTED: _edges(
        *((t, _REOPENED) for t in TERMINAL), (_R, _P), (_Q, _P), (_P, _R)
    ),
    Cause.STOP_REQUESTED: frozenset(),
    # A resumed run: what was in flight or waiting is made ready or pending afresh (these
    # edges bypass TRANSITIONS: the attempt in flight was lost with the driver).
    Cause.RESTORED: _DOWNSTREAM
    | _edges(*((s, _REOPENED) for s in (_P, _R, _Q, _RUN, _RET))) - {(_P, _P), (_R, _R)},
}


class IllegalTransition(AssertionError):
    """The core tried a transition that the table forbids (a bug in shoal, never user error)."""


INITIAL: frozenset[State] = frozenset({State.PENDING, State.READY})
"""States a task may be born in: ready when it waits for nothing, else pending."""


def check(task: int, old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(
            f"task {task}: {old.value} -> {new.value} is not a legal transition"
        )


def causes(old: State, new: State) -> list[Cause]:
    """The causes that may take the edge ``old -> new`` (from ``EVENT_EDGES``)."""
    return [c for c, edges in EVENT_EDGES.items() if (old, new) in edges]


def diagram() -> str:
    """The state diagram as Mermaid text, generated from the tables (used in the docs): each
    edge is labelled with the causes that may take it."""
    lines = ["stateDiagram-v2", "    [*] --> pending", "    [*] --> ready"]
    for old, news in TRANSITIONS.items():
        for new in sorted(news, key=lambda s: s.value):
            label = ", ".join(c.value for c in causes(old, new))
            lines.append(f"    {old.value} --> {new.value}" + (f": {label}" if label else ""))
    for s in sorted(TERMINAL, key=lambda s: s.value):
        lines.append(f"    {s.value} --> [*]")
    return "\n".join(lines)
