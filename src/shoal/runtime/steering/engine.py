"""The steering engine: rules, strategies and group statistics, inside the driver.

The core says what happened (its ``Transition`` commands); this engine keeps the statistics of
every tag, calls the rules and strategies that listen, and turns what they ask through their
controller (submit, cancel, retry, stop) back into core events. It performs no I/O of its own
and takes the time as an argument, so tests drive it with a scheduler and a fake clock.

The driver calls, in each loop iteration: :meth:`Steering.observe` with the iteration's
transitions and outcomes, :meth:`Steering.tick` for timers and metrics, :meth:`Steering.idle`
after scheduling, and :meth:`Steering.take` for the events the handlers produced; those are
handled by the core in the same iteration, so a rule's submission is committed and dispatched
with the transaction that recorded its cause.

A handler that raises is recorded (traceback in the log, count and last error in the store and
the status). With ``on_error="stop"`` (the default) the run then stops gracefully: nothing new
starts, running tasks finish, and the run ends as failed with the rule named. Every call is
timed; one slower than :data:`SLOW` seconds is reported once in the log, and the slowest call
of each rule is in ``status.json``.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import pickle
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from shoal.core.commands import Transition, transitions
from shoal.core.events import Outcome
from shoal.core.machine import Scheduler
from shoal.core.states import TERMINAL, State
from shoal.core.stimuli import (
    CancelRequested,
    RetryRequested,
    Stimulus,
    StopRequested,
    Submitted,
    TaskInfo,
)
from shoal.core.tasks import REOPENABLE
from shoal.errors import DefinitionError, RequestRefused
from shoal.runtime.steering.controller import (
    SLOW,
    Controller,
    Event,
    Owner,
    OwnerKind,
    TaskView,
)
from shoal.runtime.steering.stats import TagStats
from shoal.spec.options import Options
from shoal.spec.response import tasks_of
from shoal.spec.steer import TASK_TRIGGERS, Rule, Strategy, Tracker
from shoal.spec.task import Task, detached
from shoal.store.pickles import loads

if TYPE_CHECKING:
    from shoal.spec.lower import Record

ALL = "*"  # the group of all tasks

_TRIGGERS_OF: dict[State, tuple[str, ...]] = {
    State.RUNNING: ("task-started",),
    State.SUCCEEDED: ("task-succeeded", "task-finished"),
    State.FAILED: ("task-failed", "task-finished"),
    State.CANCELLED: ("task-cancelled",),
}


class Host(Protocol):
    """What the engine needs from the driver."""

    scheduler: Scheduler
    records: list[Record]
    log: logging.Logger

    def add_work(self, tasks: list[Task], origin: str) -> list[TaskInfo]: ...
    def retry_info(self, task: int, changes: dict[str, Any]) -> TaskInfo | None: ...
    def value(self, task: int) -> Any: ...
    def task_id(self, task: Task) -> int | None: ...


class Steering:
    """Calls the rules and strategies of a run; see the module docstring."""

    def __init__(
        self,
        host: Host,
        rules: Sequence[Rule],
        strategies: Sequence[Strategy],
        tracked: dict[str, Tracker] | None = None,
        now: float = 0.0,
    ) -> None:
        self.host = host
        self.log = host.log
        self.now = now
        self.tracked = dict(tracked or {})
        self.owners: list[Owner] = []
        labels: set[str] = set()

        def label(text: str) -> str:
            out, i = text, 1
            while out in labels:
                i += 1
                out = f"{text}#{i}"
            labels.add(out)
            return out

        self.rules: dict[str, list[tuple[Rule, Owner]]] = {}
        for r in rules:
            owner = Owner(label(r.label), OwnerKind.RULE, r.trigger, r.on_error, r)
            self.owners.append(owner)
            self.rules.setdefault(r.trigger, []).append((r, owner))
        self.strategies: list[Owner] = []
        for s in strategies:
            owner = Owner(label(s.label), OwnerKind.STRATEGY, "strategy", s.on_error, s)
            self.owners.append(owner)
            self.strategies.append(owner)
        self.task_rules = any(t in self.rules for t in TASK_TRIGGERS)
        self.eager = any(r.repeat for r, _ in self.rules.get("metric", ()))
        # The group of all tasks costs a little per task: kept when something reads it.
        self.all = bool(self.strategies or self.tracked) or any(
            not r.tags for r, _ in self.rules.get("metric", ())
        )
        self.groups: dict[str, TagStats] = {}
        if self.all:
            self.groups[ALL] = TagStats()
        self.ready_at: dict[int, float] = {}  # when tagged tasks became ready (for waits)
        self.owned: dict[int, Owner] = {}  # tasks a strategy submitted
        self.stimuli: list[Stimulus] = []
        self.next_at = {
            id(r): now + (r.seconds or 0)
            for t in ("interval", "metric")
            for r, _ in self.rules.get(t, ())
            if r.seconds
        }
        self.metric_on: dict[int, bool] = {}
        self.changed: set[str] = set()
        self.was_idle = False
        self.ended_since_idle = 0
        self.error: str | None = None  # a handler raised and the run stops because of it
        self.ending = False
        self.tagged = False  # some task has tags (statistics per tag are kept)

    # -- what the driver asks ---------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether this iteration's transitions need looking at."""
        return self.task_rules or bool(self.strategies) or self.tagged or self.all

    def note_tags(self, records: Iterable[Record]) -> None:
        if not self.tagged:
            self.tagged = any(r.options.tags for r in records)

    def take(self) -> list[Stimulus]:
        out, self.stimuli = self.stimuli, []
        return out

    def start(self, now: float) -> None:
        self.now = now
        for rule, owner in self.rules.get("start", ()):
            self._call(owner, rule.fn, Event("start", now))
        for owner in self.strategies:
            self._strategy(owner, "on_start")

    def end(self, now: float) -> None:
        self.now = now
        self.ending = True
        for rule, owner in self.rules.get("end", ()):
            self._call(owner, rule.fn, Event("end", now))
        for owner in self.strategies:
            if not owner.done and not self._done(owner) and self.error is None:
                self.log.warning(
                    "strategy %r did not say it is done, but it added no work while nothing "
                    "was left to run; the run ends here",
                    owner.label,
                )

    def observe(self, commands: Sequence[Any], outcomes: dict[int, Outcome], now: float) -> None:
        """Update statistics and call task handlers for this iteration's transitions."""
        self.now = now
        records = self.host.records
        rules = self.rules if self.task_rules else None
        for c in transitions(commands):
            new = c.new
            r = records[c.task]
            tags = r.options.tags
            if tags or self.all:
                self._count(c, tags, outcomes.get(c.task) if new in TERMINAL else None)
                if self.eager:  # level rules see every step, not only the batch's end
                    self._metrics()
            if new in TERMINAL:
                self.ended_since_idle += 1
            if rules is not None:
                for trigger in _TRIGGERS_OF.get(new, ()):
                    for rule, owner in rules.get(trigger, ()):
                        if rule.tags and not any(t in rule.tags for t in tags):
                            continue
                        if rule.name is not None and not fnmatch.fnmatchcase(r.name, rule.name):
                            continue
                        self._call(owner, rule.fn, self._event(trigger, c, r, outcomes))
            if self.strategies and new in TERMINAL:
                self._results(c, r, outcomes)
        if self.changed:
            self._metrics()

    def tick(self, now: float) -> None:
        """Interval rules whose time has come."""
        self.now = now
        for rule, owner in self.rules.get("interval", ()):
            due = self.next_at[id(rule)]
            if now >= due:
                self.next_at[id(rule)] = now + (rule.seconds or 0)
                self._call(owner, rule.fn, Event("interval", now))
        due = False
        for rule, _ in self.rules.get("metric", ()):
            if rule.seconds and now >= self.next_at[id(rule)]:
                self.next_at[id(rule)] = now + rule.seconds
                if rule.group in self.groups:
                    self.changed.add(rule.group)
                    due = True
        if due:
            self._metrics()

    def idle(self, now: float) -> None:
        """Call idle rules and strategies when resources are free and nothing is ready: when
        the run becomes idle, and again each time tasks end while it stays idle."""
        s = self.host.scheduler
        idle = s.idle and not s.stopped
        fire = idle and (not self.was_idle or self.ended_since_idle > 0)
        self.was_idle = idle
        if not fire:
            return
        self.ended_since_idle = 0
        self.now = now
        for rule, owner in self.rules.get("idle", ()):
            self._call(owner, rule.fn, Event("idle", now))
        for owner in self.strategies:
            self._strategy(owner, "on_idle")

    def summary(self) -> dict[str, Any]:
        return {
            "groups": {k: g.summary() for k, g in sorted(self.groups.items())},
            "rules": [o.summary() for o in self.owners],
        }

    def rows(self, every: bool = False) -> list[tuple[Any, ...]]:
        """Rows for the store's rules table: owners called since they were last stored (all
        of them with ``every``). A rule's definition is stored with its first row, a
        strategy's whole object with each, so that a resumed run gets them back."""
        out = []
        for position, o in enumerate(self.owners):
            if not every and o.stored is not None and o.stored[0] == o.calls:
                continue  # not called since it was stored
            try:
                memory = pickle.dumps(o.memory, protocol=5)
            except Exception as err:
                if not o.warned:
                    o.warned = True
                    self.log.warning("the memory of %r cannot be stored: %s", o.label, err)
                memory = o.stored[2] if o.stored else b""
            now = (o.calls, o.errors, memory)
            if not every and now == o.stored:
                continue
            payload = None
            if o.kind is OwnerKind.STRATEGY or o.stored is None:
                payload = self._payload(o)
            o.stored = now
            out.append(
                (
                    o.label,
                    o.trigger,
                    o.calls,
                    o.errors,
                    o.seconds,
                    o.slowest,
                    o.last_error,
                    memory,
                    position,
                    payload,
                )
            )
        return out

    def _payload(self, o: Owner) -> bytes | None:
        import cloudpickle

        try:
            data: bytes = cloudpickle.dumps(o.target, protocol=5)
            return data
        except Exception as err:
            if not o.warned:
                o.warned = True
                self.log.warning(
                    "%s %r cannot be stored (%s): a resumed run will go on without it",
                    o.kind,
                    o.label,
                    err,
                )
            return None

    def resumed(self, snap: Any) -> None:
        """A resumed run: each owner gets back its stored memory, strategies the tasks they
        had in flight, and the groups their counts (their streams start afresh). The start
        rules and ``on_start`` ran when the run started, and do not run again."""
        memories = {label: mem for label, _, _, mem in snap.rules}
        for o in self.owners:
            data = memories.get(o.label)
            if data:
                try:
                    o.memory = loads(data, f"the memory of {o.kind} {o.label!r}")
                except DefinitionError as err:  # it starts afresh, and the log says so
                    self.log.warning("%s; it starts with an empty memory", err)
                    continue
                o.stored = (o.calls, o.errors, data)
        by_label = {o.label: o for o in self.strategies}
        for tid, origin in enumerate(snap.origins):
            if origin and origin.startswith("strategy ") and not snap.states[tid].terminal:
                owner = by_label.get(origin[len("strategy ") :])
                if owner is not None:
                    self.owned[tid] = owner
        for r, state in zip(self.host.records, snap.states, strict=True):
            tags = r.options.tags
            for key in (*tags, ALL) if self.all else tags:
                g = self.groups.get(key)
                if g is None:
                    g = self.groups[key] = TagStats()
                g.moved(None, state.value)

    # -- statistics ---------------------------------------------------------------------------
    def group(self, tag: str | None) -> TagStats:
        key = ALL if tag is None else tag
        g = self.groups.get(key)
        if g is None:
            if key == ALL:
                raise DefinitionError(
                    "statistics of all tasks are kept when a strategy, a tracked field or a "
                    "metric rule without tags asks for them; ask for a tag, e.g. "
                    "ctl.stats('md')"
                )
            g = self.groups[key] = TagStats()
        return g

    def _count(self, c: Transition, tags: tuple[str, ...], o: Outcome | None) -> None:
        old = c.old.value if c.old is not None else None
        new = c.new
        keys = (*tags, ALL) if self.all else tags
        groups = self.groups
        for key in keys:
            g = groups.get(key)
            if g is None:
                g = groups[key] = TagStats()
            g.moved(old, new.value)
            self.changed.add(key)
        if new is State.READY:
            self.ready_at[c.task] = c.time
            return
        if o is None or o.started is None:
            if new in TERMINAL:
                self.ready_at.pop(c.task, None)
            return
        ready = self.ready_at.pop(c.task, None)
        took = (o.ended or o.started) - o.started
        values: dict[str, float] = {}
        if self.tracked and new is State.SUCCEEDED and o.result is not None:
            values = self._fields(c.task, o.result)
        for key in keys:
            g = groups[key]
            g.runtime.add(took)
            if ready is not None:
                g.wait.add(max(0.0, o.started - ready))
            for name, v in values.items():
                g.stream(name).add(v)

    def _fields(self, task: int, data: bytes) -> dict[str, float]:
        try:
            value = loads(data, "a result")
        except DefinitionError:
            return {}
        out = {}
        for name, get in self.tracked.items():
            try:
                x = get(value)
            except (Exception, SystemExit):  # a result without the field is not counted for it
                continue
            if isinstance(x, bool) or not isinstance(x, int | float):
                try:
                    x = float(x)
                except (TypeError, ValueError):
                    continue
            if math.isfinite(x):
                out[name] = float(x)
        return out

    def _metrics(self) -> None:
        changed, self.changed = self.changed, set()
        for rule, owner in self.rules.get("metric", ()):
            key = rule.group
            if key not in changed:
                continue
            g = self.groups[key]
            try:
                assert rule.condition is not None
                hit = bool(rule.condition(g))
            except (Exception, SystemExit) as err:
                self._failed(owner, err)
                continue
            was = self.metric_on.get(id(rule), False)
            self.metric_on[id(rule)] = hit
            if hit and (not was or rule.repeat):
                ev = Event("metric", self.now)
                ev.group = key
                ev.stats = g
                self._call(owner, rule.fn, ev)

    # -- events --------------------------------------------------------------------------------
    def _event(self, kind: str, c: Transition, r: Record, outcomes: dict[int, Outcome]) -> Event:
        ev = Event(kind, self.now)
        ev.task = TaskView(r.id, r.name, r.options.tags, c.attempt)
        ev.state = c.new.value
        o = outcomes.get(c.task)
        if o is not None and c.new is not State.RUNNING:
            ev.started, ev.ended = o.started, o.ended
            if o.ok:
                data = o.result
                if data is not None:
                    what = f"the output of {r.name!r} (#{r.id})"
                    ev._load = lambda: loads(data, what)
            else:
                ev.error = o.error or c.reason
        elif c.new is not State.RUNNING:
            ev.error = c.reason or None
        ready = self.ready_at.get(c.task)
        if ready is not None and ev.started is not None:
            ev.wait = max(0.0, ev.started - ready)
        return ev

    def _results(self, c: Transition, r: Record, outcomes: dict[int, Outcome]) -> None:
        owner = self.owned.get(c.task)
        for o in self.strategies:
            s: Strategy = o.target
            if o is owner or (s.tags and any(t in s.tags for t in r.options.tags)):
                # A strategy that is done still hears of the tasks it had in flight.
                self._strategy(o, "on_result", self._event("result", c, r, outcomes), late=True)
        if owner is not None:
            del self.owned[c.task]

    # -- calling user code ------------------------------------------------------------------
    def _call(self, owner: Owner, fn: Callable[..., Any], *args: Any) -> None:
        if self.error is not None and self.host.scheduler.stopped:
            return  # the run stops because a handler failed: call no more
        ctl = Controller(self, owner)
        t0 = time.perf_counter()
        try:
            with detached():
                fn(*args, ctl)
        except (Exception, SystemExit) as err:
            self._failed(owner, err)
        finally:
            took = time.perf_counter() - t0
            owner.calls += 1
            owner.seconds += took
            if took > owner.slowest:
                owner.slowest = took
                if took > SLOW:
                    self.log.warning(
                        "%s %r took %.3f s in one call (slow handlers delay the whole run: "
                        "move heavy work into a task the handler submits)",
                        owner.kind,
                        owner.label,
                        took,
                    )

    def _strategy(self, owner: Owner, method: str, *args: Any, late: bool = False) -> None:
        if owner.done and not late:
            return
        s: Strategy = owner.target
        self._call(owner, getattr(s, method), *args)
        if not owner.done and self._done(owner):
            owner.done = True
            self.log.info("strategy %r is done", owner.label)

    def _done(self, owner: Owner) -> bool:
        s: Strategy = owner.target
        try:
            return bool(s.done(Controller(self, owner)))
        except (Exception, SystemExit) as err:
            self._failed(owner, err)
            return True

    def _failed(self, owner: Owner, err: BaseException) -> None:
        owner.errors += 1
        text = "".join(traceback.format_exception(err))
        owner.last_error = f"{type(err).__name__}: {err}"
        self.log.error("%s %r raised %s\n%s", owner.kind, owner.label, owner.last_error, text)
        if owner.on_error == "stop" and self.error is None:
            self.error = f"{owner.kind} {owner.label!r} raised {owner.last_error}"
            self.stop(f"{self.error} (traceback in shoal.log)", True)

    # -- what controllers do ----------------------------------------------------------------
    def submit(self, owner: Owner, items: Sequence[Any]) -> list[Task]:
        if self.ending:
            raise RequestRefused(
                f"{owner.label}: the run is ending, so nothing can be submitted; submit from "
                "an 'idle' rule or a strategy's on_idle instead"
            )
        tasks: list[Task] = []
        for item in items:
            tasks.extend(tasks_of(item, "ctl.submit(...)"))
        if not tasks:
            return []
        known = [t for t in tasks if t.id is not None and self.host.task_id(t) is not None]
        if known:
            raise RequestRefused(
                f"{owner.label}: task {known[0].name!r} is part of the run already; make a "
                "new call of the task factory to run it again"
            )
        infos = self.host.add_work(tasks, f"{owner.kind} {owner.label}")
        self.stimuli.append(Submitted(self.now, tuple(infos)))
        if owner.kind is OwnerKind.STRATEGY:
            for info in infos:
                self.owned[info.id] = owner
        return tasks

    def resolve(self, target: Task | TaskView | int, what: str) -> int:
        if isinstance(target, TaskView):
            return target.id
        if isinstance(target, Task):
            tid = self.host.task_id(target)
            if tid is None:
                raise RequestRefused(f"{what}: task {target.name!r} is not part of this run")
            return tid
        if isinstance(target, int) and not isinstance(target, bool):
            if not 0 <= target < len(self.host.records):
                raise RequestRefused(f"{what}: there is no task #{target} in this run")
            return target
        raise DefinitionError(f"{what}: give a task handle, event.task or a task id")

    def of_tag(self, tag: str) -> list[TaskView]:
        return [
            TaskView(r.id, r.name, r.options.tags, 0)
            for r in self.host.records
            if tag in r.options.tags
        ]

    def cancel(self, owner: Owner, target: Task | TaskView | int | str) -> int:
        s = self.host.scheduler
        if isinstance(target, str):
            ids = [
                r.id
                for r in self.host.records
                if target in r.options.tags and r.id in s and not s.state(r.id).terminal
            ]
        else:
            tid = self.resolve(target, "ctl.cancel")
            ids = [tid] if tid in s and not s.state(tid).terminal else []
        reason = f"cancelled by {owner.kind} {owner.label!r}"
        self.stimuli.extend(CancelRequested(self.now, t, reason) for t in ids)
        return len(ids)

    def retry(self, owner: Owner, target: Task | TaskView | int, changes: dict[str, Any]) -> None:
        tid = self.resolve(target, "ctl.retry")
        state = self.host.scheduler.state(tid)
        if state not in REOPENABLE:
            raise RequestRefused(
                f"ctl.retry: task #{tid} is {state.value}; only failed or cancelled tasks can "
                "be retried"
            )
        info = self.host.retry_info(tid, changes)
        self.stimuli.append(
            RetryRequested(self.now, tid, info, f"retried by {owner.kind} {owner.label!r}")
        )

    def resources(self) -> dict[str, int]:
        return self.host.scheduler.pool.totals()

    def options(self, target: Task | TaskView | int) -> Options:
        return self.host.records[self.resolve(target, "options")].options

    def result(self, target: Task | TaskView | int) -> Any:
        return self.host.value(self.resolve(target, "result"))

    def stop(self, reason: str, drain: bool) -> None:
        self.stimuli.append(StopRequested(self.now, drain, reason))
