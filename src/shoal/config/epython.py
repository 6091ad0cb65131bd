"""ensemble-python YAML (``jobs:`` and ``rules:``), run unchanged, with the same meaning.

* A job entry is a group of ``count`` identical tasks; entries with the same ``name`` form one
  group. Jobs run only when a rule submits them (``action: {name: submit, label: NAME}``),
  every time it does.
* ``tasks`` is the number of processes (shoal ranks, at least ``nodes``); ``nodes`` is checked
  against the run's nodes; ``duration`` (seconds, 0 = none) is the time limit.
* Triggers: ``start``; ``job-start``/``job-run``, ``job-finish``/``job-cleanup``,
  ``job-success``, ``job-fail``, ``job-cancel`` fire for every job, whatever the rule's
  ``name`` says (as in ensemble-python, where the name of a job rule is only shown);
  ``metric`` reads ``count.GROUP.success|failed|finished`` or ``STAT.GROUP-duration|pending``
  (``STAT``: mean, variance, min, max) and is checked each time a task of the group changes
  state and at every ``logging.heartbeat`` (seconds); ``when`` is a number (equal) or a
  comparison such as ``"> 5"``. A metric that does not exist yet (no job of the group has
  finished) is not checked.
* Actions: ``submit``, ``terminate`` (stop the run, cancelling what runs), ``grow`` and
  ``shrink`` (the local backend cannot resize: a warning, and the action is ignored).
  ``repetitions`` (default 1) is how many times the action may run; ``backoff: N`` skips the
  N triggers after each time it ran.
* Unlike ensemble-python, shoal ends the run when nothing is left to run; ``terminate`` ends
  it earlier.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from shoal.config import model
from shoal.config.ensemble import Ensemble, Group
from shoal.config.rules import Action, Metric
from shoal.config.source import Loc, Source, assign, suggest
from shoal.config.sweep import Sweep
from shoal.errors import DefinitionError

TRIGGERS = {
    "start": "start",
    "job-start": "task-started",
    "job-run": "task-started",
    "job-finish": "task-finished",
    "job-cleanup": "task-finished",
    "job-success": "task-succeeded",
    "job-fail": "task-failed",
    "job-cancel": "task-cancelled",
    "metric": "metric",
}
NO_EVENT = ("job-depend", "job-sched", "job-submit", "job-priority", "job-alloc")
STATS = ("count", "mean", "variance", "min", "max")


class EpythonLoggingModel(model.Model):
    debug: bool = False
    heartbeat: int | float = Field(0, ge=0)


class EpythonJobModel(model.Model):
    name: str
    command: str
    count: int = Field(1, ge=1)
    nodes: int = Field(1, ge=1)
    tasks: int = Field(1, ge=1)
    duration: int | float = Field(0, ge=0)
    workdir: str | None = None


class EpythonActModel(model.Model):
    name: Literal["submit", "terminate", "grow", "shrink", "custom"]
    label: str | None = None
    value: int | float | None = None
    repetitions: int = Field(1, ge=1)
    backoff: int | None = Field(None, ge=0)


class EpythonRuleModel(model.Model):
    trigger: str
    name: str | None = None
    when: int | float | str | None = None
    action: EpythonActModel


class EpythonFileModel(model.Model):
    logging: EpythonLoggingModel = EpythonLoggingModel()
    jobs: list[EpythonJobModel]
    rules: list[EpythonRuleModel] = Field(default_factory=list)
    custom: str | None = None
    resources: model.ResourcesModel = model.ResourcesModel()


def _when(src: Source, loc: Loc, when: Any) -> tuple[str, float]:
    if isinstance(when, int | float) and not isinstance(when, bool):
        return "==", float(when)
    m = re.fullmatch(r"\s*([<>]=?)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*", str(when))
    if not m:
        raise src.error(
            loc, f"when must be a number (equal to) or a comparison like '> 5', got {when!r}"
        )
    return m.group(1), float(m.group(2))


def _metric(src: Source, loc: Loc, name: str | None, when: Any, jobs: set[str]) -> Metric:
    where = (*loc, "name")
    if not name:
        raise src.error(loc, "a metric rule needs name: e.g. count.sleep.success")
    stat, _, rest = name.partition(".")
    if stat not in STATS:
        extra = " (shoal does not keep iqr or mad)" if stat in ("iqr", "mad") else ""
        raise src.error(
            where,
            f"unknown statistic {stat!r}{suggest(stat, STATS)}{extra} Known: {', '.join(STATS)}",
        )
    fields: tuple[str, ...]
    if stat == "count":
        group, _, field = rest.rpartition(".")
        fields = ("success", "failed", "finished")
    else:
        group, _, field = rest.rpartition("-")
        fields = ("duration", "pending")
    if field not in fields or not group:
        form = "count.GROUP." + "|".join(fields) if stat == "count" else f"{stat}.GROUP-duration"
        raise src.error(where, f"cannot read metric {name!r}: write {form} (or GROUP-pending)")
    if group not in jobs:
        raise src.error(
            where,
            f"metric {name!r} names group {group!r}, which is not a job{suggest(group, jobs)}",
        )
    if when is None:
        raise src.error(loc, "a metric rule needs when: (a number, or a comparison like '> 5')")
    op, value = _when(src, (*loc, "when"), when)
    return Metric(group, stat, field, op, value)


def ensemble(src: Source) -> Ensemble:
    f: EpythonFileModel = model.check(EpythonFileModel, src.data, src)
    if f.custom is not None:
        raise src.error(
            ("custom",),
            "custom actions are Python code inside the YAML file; shoal runs no code from "
            "config files. Write the action as a rule in Python (wf.on(...)) instead",
        )
    groups: dict[str, Group] = {}
    seen: dict[str, int] = {}
    names_all = {job.name for job in f.jobs}
    for i, job in enumerate(f.jobs):
        loc: Loc = ("jobs", i)
        k = seen.get(job.name, 0)
        seen[job.name] = k + 1
        key = job.name
        while key in groups or (key != job.name and key in names_all):
            k += 1
            key = f"{job.name}#{k + 1}"  # another entry of the same job
        groups[key] = Group(
            name=key,
            loc=loc,
            src=src,
            template=job.command.replace("{", "{{").replace("}", "}}"),
            fn=None,
            function=None,
            args={},
            sweep=Sweep(),
            count=job.count,
            options={
                "name": job.name,
                "cpus": 1,
                "ranks": max(job.tasks, job.nodes),
                "tags": (job.name,),
                **({"timeout": job.duration} if job.duration else {}),
            },
            keys={"ranks": (*loc, "tasks"), "cpus": (*loc, "tasks"), "nodes": (*loc, "nodes")},
            duration=float(job.duration) if job.duration else None,
            workdir=job.workdir,
            start=False,
            nodes=job.nodes,
            tag=job.name,
        )
    names = set(seen)
    ens = Ensemble(
        name=src.path.stem,
        src=src,
        format="ensemble-python",
        groups=groups,
        resources=f.resources.model_dump(exclude={"nodes"}, exclude_none=True),
        nodes=f.resources.nodes,
    )
    beat = float(f.logging.heartbeat) or None
    for i, r in enumerate(f.rules):
        ens.rules.append(_rule(src, i, r, names, beat, ens))
    return ens


def _rule(
    src: Source, i: int, r: EpythonRuleModel, names: set[str], beat: float | None, ens: Ensemble
) -> Action:
    loc: Loc = ("rules", i)
    if r.trigger in NO_EVENT:
        raise src.error(
            (*loc, "trigger"),
            f"shoal has no event for {r.trigger!r} (a job entering that state); use job-start, "
            "job-finish, job-success or job-fail",
        )
    trigger = TRIGGERS.get(r.trigger)
    if trigger is None:
        raise src.error(
            (*loc, "trigger"),
            f"unknown trigger {r.trigger!r}{suggest(r.trigger, TRIGGERS)} Triggers: "
            f"{', '.join(TRIGGERS)}",
        )
    a = r.action
    if a.name == "custom":
        raise src.error(
            (*loc, "action", "name"),
            "custom actions run Python code from the file; shoal runs no code from config "
            "files. Write the action as a rule in Python (wf.on(...)) instead",
        )
    if a.name == "submit":
        if a.label is None:
            raise src.error((*loc, "action"), "a submit action needs label: JOB_NAME")
        if a.label not in names:
            raise src.error(
                (*loc, "action", "label"),
                f"no job named {a.label!r}{suggest(a.label, names)} Jobs: "
                + ", ".join(sorted(names)),
            )
    check = _metric(src, loc, r.name, r.when, names) if trigger == "metric" else None
    if a.name in ("grow", "shrink"):
        ens.notes.append(
            f"{src.where((*loc, 'action'))}: {a.name}: the local backend cannot resize the "
            "allocation; the action will be logged and ignored"
        )
    kind = {"terminate": "stop"}.get(a.name, a.name)
    return Action(
        label=f"rule {i + 1} ({r.trigger}: {a.name}{' ' + a.label if a.label else ''})",
        trigger=trigger,
        kind=kind,
        where=src.where(loc),
        tags=(check.group,) if check else (),
        seconds=beat if check else None,
        when=check,
        repeat=True,
        target=a.label if a.name == "submit" else None,
        drain=False,
        times=a.repetitions,
        skip=a.backoff or 0,
    )


def override(src: Source, parts: list[str | int], value: Any, text: str) -> None:
    """``--set sleep.count=3`` (every entry of job ``sleep``) or ``--set resources.cpus=8``."""
    jobs = src.data.get("jobs") or []
    hits = [i for i, j in enumerate(jobs) if isinstance(j, dict) and j.get("name") == parts[0]]
    if hits:
        for i in hits:
            assign(src, ["jobs", i, *parts[1:]], value, text)
    elif parts[0] in ("resources", "logging"):
        assign(src, parts, value, text)
    else:
        names = [str(j.get("name")) for j in jobs if isinstance(j, dict)]
        raise DefinitionError(
            f"--set {text}: no job named {parts[0]!r}{suggest(parts[0], names)} Jobs: "
            f"{', '.join(map(str, names))}"
        )
