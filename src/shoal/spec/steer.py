"""Rules and strategies: how a workflow steers its own run (the definitions, not the engine).

``@wf.on(trigger, ...)`` registers a :class:`Rule`: a handler ``fn(event, ctl)`` the driver
calls when the trigger happens. ``wf.add(MyStrategy())`` registers a :class:`Strategy`, the
class form for whole campaigns. Both run inside the driver (no job per decision); the engine
that calls them is :mod:`shoal.runtime.steering`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shoal.errors import DefinitionError
from shoal.spec.expr import Compiled, compile_condition

TASK_TRIGGERS = (
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-finished",
    "task-cancelled",
)
RUN_TRIGGERS = ("start", "end", "idle")
TRIGGERS = (*TASK_TRIGGERS, *RUN_TRIGGERS, "interval", "metric")
ON_ERROR = ("stop", "log")


@dataclass(slots=True)
class Rule:
    """One registered handler and what it listens to.

    ``tags`` and ``name`` filter task events (a task matches when it has one of the tags, and
    its name matches the glob ``name``); a metric rule reads the group of its one tag (all
    tasks without one). ``label`` names the rule in logs and the status (the function's name).
    """

    trigger: str
    fn: Callable[..., Any]
    label: str
    tags: tuple[str, ...] = ()
    name: str | None = None
    seconds: float | None = None
    when: str | Callable[..., Any] | None = None
    on_error: str = "stop"
    condition: Compiled | Callable[..., Any] | None = None
    repeat: bool = False  # metric: fire at every check while true, not only when it turns true

    @property
    def group(self) -> str:
        """The statistics group a metric rule reads: its tag, or ``*`` for all tasks."""
        return self.tags[0] if self.tags else "*"


def _tags(value: str | Iterable[str] | None, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or not all(isinstance(t, str) for t in items):
        raise DefinitionError(f"{where}: tags must be a string or a list of strings")
    return items


def make_rule(
    trigger: str,
    fn: Callable[..., Any],
    *,
    tags: str | Iterable[str] | None = None,
    name: str | None = None,
    seconds: float | None = None,
    when: str | Callable[..., Any] | None = None,
    on_error: str = "stop",
    label: str | None = None,
    repeat: bool = False,
    **unknown: Any,
) -> Rule:
    """Check a rule's definition, with messages that say what to write instead."""
    if unknown:
        known = ["tags", "name", "seconds", "when", "on_error", "label", "repeat"]
        bad = sorted(unknown)[0]
        raise DefinitionError(
            f"rule on {trigger!r}: unknown option {bad!r}{_close(bad, known)} "
            f"Options: {', '.join(known)}"
        )
    title = str(label or getattr(fn, "__name__", None) or "rule")
    where = f"rule {title!r} ({trigger})"
    _check_handler(where, trigger, fn, on_error)
    if name is not None and not isinstance(name, str):
        raise DefinitionError(f"{where}: name= filters tasks by name (a glob), got {name!r}")
    tag_tuple = _tags(tags, where)
    if (tag_tuple or name) and trigger not in TASK_TRIGGERS and trigger != "metric":
        raise DefinitionError(f"{where}: tags= and name= filter task events; {trigger} has none")
    _check_seconds(where, trigger, seconds)
    if not isinstance(repeat, bool) or (repeat and trigger != "metric"):
        raise DefinitionError(f"{where}: repeat=True is only for metric rules")
    condition = _condition(where, trigger, tag_tuple, name, when)
    return Rule(
        trigger,
        fn,
        title,
        tag_tuple,
        name,
        float(seconds) if seconds is not None else None,
        when,
        on_error,
        condition,
        repeat,
    )


def _close(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_handler(where: str, trigger: str, fn: Any, on_error: str) -> None:
    """A known trigger, a callable handler and a known ``on_error``."""
    if trigger not in TRIGGERS:
        raise DefinitionError(
            f"unknown trigger {trigger!r}{_close(str(trigger), TRIGGERS)} "
            f"Triggers are: {', '.join(TRIGGERS)}"
        )
    if not callable(fn):
        raise DefinitionError(f"{where}: the handler must be a function fn(event, ctl)")
    if on_error not in ON_ERROR:
        raise DefinitionError(
            f"{where}: on_error must be 'stop' (stop the run gracefully, the default) or "
            f"'log' (record the error and go on), got {on_error!r}"
        )


def _check_seconds(where: str, trigger: str, seconds: Any) -> None:
    """``seconds=`` is a positive number for interval rules (and metric rules that also check
    every N s), and absent otherwise."""
    if trigger == "interval" or (trigger == "metric" and seconds is not None):
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise DefinitionError(f"{where}: an interval rule needs seconds=N (N > 0)")
    elif seconds is not None:
        raise DefinitionError(
            f"{where}: seconds= is for interval rules (and metric rules: check every N s too)"
        )


def _condition(
    where: str,
    trigger: str,
    tags: tuple[str, ...],
    name: str | None,
    when: str | Callable[..., Any] | None,
) -> Compiled | Callable[..., Any] | None:
    """A metric rule's condition over its one group (``when``); other rules take none."""
    if trigger != "metric":
        if when is not None:
            raise DefinitionError(f"{where}: when= is only for metric rules")
        return None
    if len(tags) > 1:
        raise DefinitionError(
            f"{where}: a metric rule reads one group: give one tag (or none for all tasks)"
        )
    if name is not None:
        raise DefinitionError(f"{where}: a metric rule reads a group by tag, not by name")
    if isinstance(when, str):
        return compile_condition(when, where)
    if callable(when):
        return when
    raise DefinitionError(
        f"{where}: a metric rule needs when='mean(runtime) > 30' or when=callable "
        "taking the group's statistics"
    )


class Strategy:
    """The class form of steering, for whole campaigns. Override what you need.

    * ``on_start(ctl)``: the run starts (submit the first batch here).
    * ``on_result(event, ctl)``: a task this strategy submitted (or one with a tag in
      ``tags``) finished, succeeded or not.
    * ``on_idle(ctl)``: resources are free and nothing is ready to use them.
    * ``done(ctl)``: True when the campaign is complete. The strategy then submits nothing
      more (no ``on_idle``); it still hears ``on_result`` of the tasks it had in flight, and
      the run ends once they have finished.

    ``ctl.memory`` is the strategy's own dict, stored with the run. Several strategies may run
    in one run; each sees its own tasks.
    """

    tags: tuple[str, ...] = ()
    on_error: str = "stop"

    @property
    def label(self) -> str:
        return type(self).__name__

    def on_start(self, ctl: Any) -> None:
        """The run starts."""

    def on_result(self, event: Any, ctl: Any) -> None:
        """A task of this strategy finished."""

    def on_idle(self, ctl: Any) -> None:
        """Resources are free and nothing is ready."""

    def done(self, ctl: Any) -> bool:
        """Whether the campaign is complete."""
        return False


Tracker = Callable[[Any], Any]


def make_tracker(name: str, spec: str | Tracker) -> Tracker:
    """A function from a result to the number to track: a path like ``"energy"``,
    ``"forces.max"`` or ``"0"``, or a callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise DefinitionError(
            f"track {name!r}: give a field path like 'energy' or a function of the result"
        )
    steps = spec.split(".")

    def get(value: Any) -> Any:
        for step in steps:
            if isinstance(value, dict):
                value = value[step]
            elif isinstance(value, list | tuple) and step.lstrip("-").isdigit():
                value = value[int(step)]
            else:
                value = getattr(value, step)
        return value

    return get
