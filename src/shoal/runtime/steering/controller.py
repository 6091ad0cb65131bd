"""What a rule or strategy handler is given: the ``Event`` it reacts to and the ``Controller``
through which it acts (both are defined here; the engine that calls them is
:mod:`shoal.runtime.steering.engine`, seen here only through the :class:`Engine` protocol).
``Owner`` is the engine's record of one rule or strategy.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shoal.runtime.steering.stats import TagStats
from shoal.spec.options import Options
from shoal.spec.task import Task

SLOW = 0.1  # seconds: a handler call slower than this is reported


class TaskView:
    """The task an event is about: ``id``, ``name``, ``tags`` and ``attempt``."""

    __slots__ = ("attempt", "id", "name", "tags")

    def __init__(self, id: int, name: str, tags: tuple[str, ...], attempt: int) -> None:
        self.id = id
        self.name = name
        self.tags = tags
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"<task {self.name!r} #{self.id} attempt {self.attempt}>"


class Event:
    """What a handler is told: ``kind`` (the trigger), ``time``; for task events ``task``,
    ``state``, ``result`` (the return value, read on first use), ``error``, ``started``,
    ``ended``, ``runtime`` and ``wait`` (seconds ready before it started); for metric events
    ``group`` and ``stats``."""

    __slots__ = (
        "_load",
        "_result",
        "ended",
        "error",
        "group",
        "kind",
        "started",
        "state",
        "stats",
        "task",
        "time",
        "wait",
    )

    def __init__(self, kind: str, now: float) -> None:
        self.kind = kind
        self.time = now
        self.task: TaskView | None = None
        self.state: str | None = None
        self.error: str | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.wait: float | None = None
        self.group: str | None = None
        self.stats: TagStats | None = None
        self._load: Callable[[], Any] | None = None
        self._result: Any = _UNREAD

    @property
    def result(self) -> Any:
        """The task's return value (None unless it succeeded)."""
        if self._result is _UNREAD:
            self._result = self._load() if self._load is not None else None
        return self._result

    @property
    def runtime(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    def __repr__(self) -> str:
        what = f" {self.task!r} {self.state}" if self.task else ""
        return f"<Event {self.kind}{what}>"


_UNREAD = object()


class OwnerKind(enum.StrEnum):
    """What calls a handler: a rule (``Workflow.rule``, a config file's rules) or a strategy."""

    RULE = "rule"
    STRATEGY = "strategy"


class Owner:
    """A rule or a strategy, as the engine keeps it: its memory and its record of calls."""

    __slots__ = (
        "calls",
        "done",
        "errors",
        "kind",
        "label",
        "last_error",
        "memory",
        "on_error",
        "seconds",
        "slowest",
        "stored",
        "target",
        "trigger",
        "warned",
    )

    def __init__(
        self, label: str, kind: OwnerKind, trigger: str, on_error: str, target: Any
    ) -> None:
        self.label = label
        self.kind = kind
        self.trigger = trigger
        self.on_error = on_error
        self.target = target  # the Rule or the Strategy
        self.memory: dict[str, Any] = {}
        self.calls = 0
        self.errors = 0
        self.seconds = 0.0
        self.slowest = 0.0
        self.last_error: str | None = None
        self.done = False  # a strategy that said it is done
        self.warned = False
        self.stored: tuple[int, int, bytes] | None = None  # (calls, errors, memory) stored

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.label,
            "kind": self.kind,
            "trigger": self.trigger,
            "calls": self.calls,
            "errors": self.errors,
            "seconds": round(self.seconds, 6),
            "slowest": round(self.slowest, 6),
            "slow": self.slowest > SLOW,
            "last_error": self.last_error,
        }


class Engine(Protocol):
    """What a controller asks of the steering engine."""

    now: float
    log: logging.Logger

    def submit(self, owner: Owner, items: Sequence[Any]) -> list[Task]: ...
    def cancel(self, owner: Owner, target: Task | TaskView | int | str) -> int: ...
    def retry(
        self, owner: Owner, target: Task | TaskView | int, changes: dict[str, Any]
    ) -> None: ...
    def stop(self, reason: str, drain: bool) -> None: ...
    def group(self, tag: str | None) -> TagStats: ...
    def of_tag(self, tag: str) -> list[TaskView]: ...
    def resources(self) -> dict[str, int]: ...
    def options(self, target: Task | TaskView | int) -> Options: ...
    def result(self, target: Task | TaskView | int) -> Any: ...


class Controller:
    """What a handler may do: ``submit``, ``cancel``, ``retry``, ``stop``, ``log``; ``stats``,
    ``resources``, ``result``, ``tasks``, ``options``; and ``memory``, its own dict, stored with
    the run."""

    __slots__ = ("_engine", "_owner")

    def __init__(self, engine: Engine, owner: Owner) -> None:
        self._engine = engine
        self._owner = owner

    @property
    def memory(self) -> dict[str, Any]:
        return self._owner.memory

    @property
    def now(self) -> float:
        return self._engine.now

    def submit(self, *items: Any) -> list[Task]:
        """Add tasks or workflows to the run; they may use results of tasks already in it."""
        return self._engine.submit(self._owner, items)

    def cancel(self, target: Task | TaskView | int | str) -> int:
        """Cancel a task (handle, event task or id) or every unfinished task of a tag; the
        tasks downstream end as cancelled. Returns how many were asked to stop."""
        return self._engine.cancel(self._owner, target)

    def retry(self, task: Task | TaskView | int, **changes: Any) -> None:
        """Run a failed or cancelled task again, optionally with other options, e.g.
        ``ctl.retry(event.task, cpus=4, timeout=1200)``."""
        self._engine.retry(self._owner, task, changes)

    def stop(self, drain: bool = True) -> None:
        """Start nothing new; with ``drain=False`` stop the running tasks too."""
        self._engine.stop(f"{self._owner.kind} {self._owner.label!r} stopped the run", drain)

    def stats(self, tag: str | None = None) -> TagStats:
        """Counts and statistics of a tag's tasks (``None``: all tasks)."""
        return self._engine.group(tag)

    def resources(self) -> dict[str, int]:
        """Cores and GPUs: total and free."""
        return self._engine.resources()

    def tasks(self, tag: str) -> list[TaskView]:
        """The tasks of a tag in the run, in the order they were added."""
        return self._engine.of_tag(tag)

    def options(self, task: Task | TaskView | int) -> Options:
        """The options a task has now (after any retry that changed them)."""
        return self._engine.options(task)

    def log(self, message: str, *args: Any, warning: bool = False) -> None:
        """Write a line to the run's shoal.log, naming this rule or strategy."""
        o = self._owner
        text = f"{o.kind} {o.label!r}: {message % args if args else message}"
        (self._engine.log.warning if warning else self._engine.log.info)(text)

    def result(self, task: Task | TaskView | int) -> Any:
        """The return value of a task that succeeded."""
        return self._engine.result(task)
