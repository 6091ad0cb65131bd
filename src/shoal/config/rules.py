"""Rules from config files: a trigger, an optional condition, and one action.

An :class:`Action` is registered on the workflow (:func:`shoal.config.build.attach`) as an
ordinary steering rule (``wf.on(trigger, ...)``) whose handler is a :class:`Fire`. The handler
keeps its counters in the rule's memory, which is stored with the run, so ``times`` and
``skip`` survive a resume.

Counting follows ensemble-python, whose ``repetitions``/``backoff`` map onto ``times``/``skip``:
a trigger that passes the condition either acts (when no skips are left; then the skips are
reset to ``skip`` and one of ``times`` is used up) or uses up one skip.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.errors import DefinitionError

if TYPE_CHECKING:
    from shoal.config.ensemble import Ensemble

OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Metric:
    """A level condition on a group's statistics, checked each time the rule is triggered
    (ensemble-python's ``name: mean.sleep-pending`` with ``when: "> 5"``)."""

    group: str
    stat: str  # count, mean, variance, min, max
    field: str  # count: success, failed, finished; others: duration or pending
    op: str
    value: float

    def read(self, g: Any) -> float | None:
        if self.stat == "count":
            finished = sum(g.count(s) for s in ("succeeded", "failed", "cancelled", "dep_failed"))
            if not finished:
                return None  # ensemble-python has no count until a job of the group finished
            if self.field == "success":
                return float(g.count("succeeded"))
            if self.field == "failed":
                return float(g.count("failed") + g.count("cancelled"))
            return float(finished)
        s = g.stream("runtime" if self.field == "duration" else "wait")
        if not s.count:
            return None
        x = {"mean": s.mean, "variance": s.var, "min": s.min, "max": s.max}[self.stat]
        return float(x)

    def __call__(self, g: Any) -> bool:
        x = self.read(g)
        return x is not None and not math.isnan(x) and OPS[self.op](x, self.value)

    def describe(self) -> str:
        return f"{self.stat}.{self.group}.{self.field} {self.op} {self.value:g}"


@dataclass
class Action:
    """One rule of a config file, checked."""

    label: str
    trigger: str  # a shoal trigger
    kind: str  # submit, retry, cancel, stop, grow, shrink, log
    where: str  # file:line of the rule, for messages
    tags: tuple[str, ...] = ()
    seconds: float | None = None
    when: str | Metric | None = None  # metric: shoal's condition text, or an ensemble-python one
    repeat: bool = False  # metric: act at every check while true (ensemble-python)
    target: str | None = None
    drain: bool = True
    retry: dict[str, Any] = field(default_factory=dict)
    attempts: int = 3
    message: str = ""
    times: int | None = None
    skip: int = 0

    def describe(self) -> str:
        on = self.trigger + (f" [{', '.join(self.tags)}]" if self.tags else "")
        if self.seconds:
            on += f" every {self.seconds:g} s"
        if isinstance(self.when, Metric):
            on += f" when {self.when.describe()}" + (" (checked at every change)" * self.repeat)
        elif self.when:
            on += f" when {self.when}"
        what = self.kind + (f" {self.target}" if self.target else "")
        if self.kind == "retry" and self.retry:
            what += " with " + ", ".join(
                f"{k} x{x:g}" if how == "scale" else f"{k} {x:g}"
                for k, (how, x) in self.retry.items()
            )
        if self.kind == "retry":
            what += f", up to {self.attempts} attempts"
        if self.kind == "stop":
            what += " (let running tasks finish)" if self.drain else " (cancel running tasks)"
        limits = []
        if self.times is not None:
            limits.append(f"at most {self.times}×")
        if self.skip:
            limits.append(f"then skip {self.skip}")
        return f"{self.label}: on {on}: {what}" + (f" ({', '.join(limits)})" if limits else "")


def scale(where: str, key: str, spec: Any) -> tuple[str, float]:
    """``"x2"``/``"*2"``/``"2x"`` -> ("scale", 2.0); a number -> ("set", n)."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return ("set", float(spec))
    if isinstance(spec, str):
        text = spec.strip().lower().replace(" ", "")
        for body in (
            text[1:] if text[:1] in "x*" else None,
            text[:-1] if text[-1:] == "x" else None,
        ):
            if body:
                try:
                    return ("scale", float(body))
                except ValueError:
                    pass
        if key == "memory":
            return ("set", float(_mb(where, spec)))
    raise DefinitionError(
        f"{where}: retry {key}: write a factor like 'x2' or a new value, got {spec!r}"
    )


def _mb(where: str, text: str) -> int:
    from shoal.spec.options import parse_memory

    try:
        return parse_memory(text)
    except DefinitionError as err:
        raise DefinitionError(f"{where}: {err}") from None


@dataclass
class Fire:
    """The handler of an :class:`Action` (picklable: it is stored with the run)."""

    action: Action
    ensemble: Ensemble = field(repr=False)

    def __call__(self, event: Any, ctl: Any) -> None:
        a = self.action
        mem = ctl.memory
        if a.times is not None and mem.get("done", 0) >= a.times:
            return
        if mem.get("skip", 0) > 0:
            mem["skip"] -= 1
            return
        mem["skip"] = a.skip
        mem["done"] = mem.get("done", 0) + 1
        getattr(self, "_" + a.kind)(event, ctl)

    def _submit(self, event: Any, ctl: Any) -> None:
        ens = self.ensemble
        tasks = []
        for g in ens.tagged(self.action.target or ""):
            ids = {up: [t.id for t in ctl.tasks(up)] for up in ens.needs(g)}
            tasks.extend(ens.later(g, ids))
        ctl.submit(*tasks)

    def _retry(self, event: Any, ctl: Any) -> None:
        task = event.task
        if task is None or event.state not in ("failed", "cancelled"):
            return
        if task.attempt >= self.action.attempts:
            ctl.log("task #%d has had %d attempts; not retried again", task.id, task.attempt)
            return
        opts = ctl.options(task)
        changes: dict[str, Any] = {}
        for key, spec in self.action.retry.items():
            how, x = spec
            old = getattr(opts, key)
            if how == "set":
                changes[key] = int(x) if key in ("cpus", "memory") else x
            elif old:  # a factor scales what the task had (no timeout: stays none)
                changes[key] = math.ceil(old * x) if key in ("cpus", "memory") else old * x
        ctl.retry(task, **changes)

    def _cancel(self, event: Any, ctl: Any) -> None:
        ctl.cancel(self.action.target or "")

    def _stop(self, event: Any, ctl: Any) -> None:
        ctl.stop(drain=self.action.drain)

    def _log(self, event: Any, ctl: Any) -> None:
        task = event.task
        values = {
            "task": task.name if task else "",
            "id": task.id if task else "",
            "state": event.state or "",
            "error": event.error or "",
            "group": event.group or "",
        }
        try:
            text = self.action.message.format_map(values)
        except (KeyError, ValueError, IndexError):
            text = self.action.message
        ctl.log(text)

    def _grow(self, event: Any, ctl: Any) -> None:
        ctl.log(
            "%s: this backend cannot resize the allocation; ignored", self.action.kind, warning=True
        )

    _shrink = _grow
