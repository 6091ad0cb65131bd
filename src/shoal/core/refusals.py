"""Refusals: ``Scheduler.handle`` raises one when it cannot accept a stimulus, unchanged."""

from __future__ import annotations

from shoal.core.commands import Command
from shoal.core.states import IllegalTransition
from shoal.core.stimuli import Stimulus
from shoal.errors import RequestRefused, ResourceError


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


class RefusedRequest(Refused, RequestRefused):
    """A request (submission, cancel, retry, rerun, restore, a Response's added work) that
    cannot be done as asked: unknown or duplicate ids, a cycle, the wrong state."""


class RefusedResource(RefusedRequest, ResourceError):
    """A request for resources that no node can ever hold."""


class UnknownEvent(Refused, TypeError):
    """Something that is not an event the scheduler knows."""
