"""shoal's own config format, as pydantic models (the schema; see docs/config.md).

::

    name: screen
    resources: {cpus: 8, gpus: 0}
    options: {retries: 1}
    groups:
      relax:
        command: "python relax.py --element {element} --a {a}"
        sweep: {element: [Cu, Ag, Au], a: "linspace(3.5, 4.2, 8)"}
        cpus: 2
        timeout: 600
      fit:
        function: "eos_tools:fit"
        inputs: {points: relax}
    rules:
      - on: task-failed
        group: relax
        retry: {timeout: x2}

Models forbid unknown keys; :func:`check` turns pydantic's errors into messages that name the
file, the line and the key, with the closest valid key for a misspelt one.

Each model is named after its section with ``Model`` at the end (``GroupModel``, ``RuleModel``;
ensemble-python's, in :mod:`shoal.config.epython`, also start with ``Epython``), so that none
shares a name with what it is checked into (:class:`shoal.config.ensemble.Group`, the steering
:class:`shoal.spec.steer.Rule`, :class:`shoal.spec.options.Options`). Messages still name the
section (``instance of Group``).
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal.config.source import Loc, Source, dotted, suggest
from shoal.config.sweep import MAX_TASKS
from shoal.errors import DefinitionError

Number = int | float
Amount = int | str  # an integer, or "{param}": a swept parameter's value


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResourcesModel(Model):
    """The node this run uses (default: the whole machine)."""

    cpus: int | None = Field(None, ge=1)
    gpus: int | None = Field(None, ge=0)
    memory: int | str | None = None
    nodes: int = Field(1, ge=1)


class OptionsModel(Model):
    """Run options passed to ``shoal.run`` (see the README's list)."""

    policy: Literal["backfill", "waves", "adaptive", "non-adaptive"] | None = None
    order: Literal["fifo", "largest"] | None = None
    reserve_after: Number | None = None
    pin: bool | Literal["fold"] | None = None
    launcher: str | None = None
    mpi: Literal["pmix", "pmi2", "none"] | None = None
    prefetch: int | None = Field(None, ge=0)
    stop_mode: Literal["cancel", "finish"] | None = None
    retries: int | None = Field(None, ge=0)
    backoff: Number | dict[str, Number] | None = None
    retry_on: list[str] | str | None = None
    base: str | None = None
    state_dir: str | None = None


class GroupModel(Model):
    """One named group of tasks: a command template or a function, swept over parameters."""

    command: str | None = None
    function: str | None = None
    args: dict[str, Any] = {}
    sweep: dict[str, Any] = {}
    relation: Literal["product", "zip"] = "product"
    zip_: list[list[str]] = Field([], alias="zip")
    count: int = Field(1, ge=1)
    cpus: Amount = 1
    gpus: Amount = 0
    ranks: Amount = 1
    memory: int | str | None = None
    timeout: Number | str | None = None
    retries: int | None = Field(None, ge=0)
    backoff: Number | dict[str, Number] | None = None
    retry_on: list[str] | str | None = None
    priority: Amount = 0
    tags: list[str] | str = []
    duration: Number | None = Field(None, gt=0)
    workdir: str | None = None
    env: dict[str, str | int | float] = {}
    after: list[str] | str = []
    each: str | None = None
    inputs: dict[str, str] = {}
    start: bool = True


class RetryModel(Model):
    """What a ``retry`` action changes: ``x2`` scales, a number sets."""

    timeout: Number | str | None = None
    memory: int | str | None = None
    cpus: int | str | None = None
    attempts: int = Field(3, ge=1)


Trigger = Literal[
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-finished",
    "task-cancelled",
    "group-finished",
    "start",
    "end",
    "idle",
    "interval",
    "metric",
]
TRIGGERS: tuple[str, ...] = typing.get_args(Trigger)
ACTIONS = ("submit", "retry", "cancel", "stop", "grow", "shrink", "log")


class RuleModel(Model):
    """``on`` a trigger, do one action (``submit``, ``retry``, ``cancel``, ``stop``, ``log``)."""

    on: Trigger
    group: str | None = None
    seconds: Number | None = Field(None, gt=0)
    when: str | None = None
    submit: str | None = None
    retry: RetryModel | bool | None = None
    cancel: str | None = None
    stop: Literal["drain", "now"] | bool | None = None
    grow: int | None = None
    shrink: int | None = None
    log: str | None = None
    times: int | None = Field(None, ge=1)
    every: int = Field(1, ge=1)
    label: str | None = None


class ConfigModel(Model):
    """A whole shoal config file."""

    name: str | None = None
    resources: ResourcesModel = ResourcesModel()
    options: OptionsModel = OptionsModel()
    groups: dict[str, GroupModel]
    rules: list[RuleModel] = []
    max_tasks: int = Field(MAX_TASKS, ge=1)  # the most tasks a run may have, all groups together


_MESSAGES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string (quote it)",
    "bool_type": "must be true or false",
    "dict_type": "must be a mapping of keys to values",
    "list_type": "must be a list",
}


def _explain(err: dict[str, Any], model: type[BaseModel], src: Source, prefix: Loc) -> str:
    loc: Loc = tuple(x for x in err["loc"] if not _is_union_tag(x))
    kind = err["type"]
    full = (*prefix, *loc)
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        hint = suggest(str(loc[-1]), known)
        return src.where(full) + (
            f": unknown key {loc[-1]!r}{hint} Valid keys here: {', '.join(known)}"
        )
    if kind == "missing":
        return src.where(full[:-1]) + f": {dotted(full)} is required"
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    message = _MESSAGES.get(kind, err["msg"][:1].lower() + err["msg"][1:])
    if kind == "model_type":  # pydantic names the class: say the section's name ("Group")
        cls = str((err.get("ctx") or {}).get("class_name", ""))
        message = message.replace(cls, shown_name(cls)) if cls else message
    if kind == "literal_error" and isinstance(got, str):
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        message = f"must be one of {', '.join(choices)}"
        shown = f" (got {got!r}{suggest(got, choices)})"
    return src.where(full) + f": {message}{shown}"


def shown_name(cls: str) -> str:
    """The name a message gives a model: its section, without the naming convention of the
    classes (``GroupModel`` -> ``Group``, ``EpythonRuleModel`` -> ``Rule``)."""
    return cls.removeprefix("Epython").removesuffix("Model")


def _is_union_tag(part: Any) -> bool:
    """pydantic adds the member type to the location of union errors ('int', 'str' ...)."""
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool", "list[str]", "dict[str,float]")
        or part.startswith(
            ("function-", "literal[", "dict[", "list[", "RetryModel", "ResourcesModel")
        )
    )


def _step(ann: Any, part: Any) -> Any:
    """The type found one step (a field, a dict key or a list index) inside ``ann``."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        for name, info in ann.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    for a in args:  # a union: the first member that has something at this step
        inner = _step(a, part)
        if inner is not None:
            return inner
    return None


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        m = _model_in(a)
        if m is not None:
            return m
    return None


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys valid at ``loc`` inside ``model``."""
    ann: Any = model
    for part in loc:
        ann = _step(ann, part)
    m = _model_in(ann)
    return [f.alias or n for n, f in m.model_fields.items()] if m is not None else []


def check(model: type[Model], data: Any, src: Source, prefix: Loc = ()) -> Any:
    """Validate ``data``; every problem is listed with its file, line and key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        by_loc: dict[Loc, list[dict[str, Any]]] = {}
        for e in err.errors():
            loc: Loc = tuple(x for x in e["loc"] if not _is_union_tag(x))
            by_loc.setdefault(loc, []).append(dict(e))
        problems: list[tuple[int, str]] = []
        for loc, errs in by_loc.items():
            if any(other[: len(loc)] == loc and other != loc for other in by_loc):
                continue  # a union whose model member has errors deeper in: report those
            if len(errs) > 1 and all(e["type"] in _MESSAGES for e in errs):
                wanted = " or ".join(
                    dict.fromkeys(_MESSAGES[e["type"]].removeprefix("must be ") for e in errs)
                )
                got = errs[0].get("input")
                shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
                text = src.where((*prefix, *loc)) + f": must be {wanted}{shown}"
            else:
                text = _explain(errs[0], model, src, prefix)
            problems.append((src.line((*prefix, *loc)) or 0, text))
        problems.sort(key=lambda p: p[0])
        more = f"\n(and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DefinitionError("\n".join(t for _, t in problems[:10]) + more) from None
