"""The backend's report of an attempt (:class:`Outcome`), and the names of the core's stimuli,
commands and refusals as they were imported before they had modules of their own
(:mod:`shoal.core.stimuli`, :mod:`shoal.core.commands`, :mod:`shoal.core.refusals`)."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.commands import Command, Dispatch, Kill, Transition
from shoal.core.refusals import (
    Refused,
    RefusedReport,
    RefusedRequest,
    RefusedResource,
    UnknownEvent,
)
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
    "Cancel",
    "CancelRequested",
    "Command",
    "Dispatch",
    "Failed",
    "Kill",
    "Outcome",
    "Refused",
    "RefusedReport",
    "RefusedRequest",
    "RefusedResource",
    "Rerun",
    "RerunRequested",
    "Restored",
    "Retry",
    "RetryRequested",
    "Returned",
    "Stimulus",
    "Stop",
    "StopRequested",
    "Submitted",
    "Succeeded",
    "TaskInfo",
    "Tick",
    "Transition",
    "UnknownEvent",
]


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
