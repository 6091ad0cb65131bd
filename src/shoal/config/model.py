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
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal.config.source import Loc, Source, dotted, suggest
from shoal.errors import DefinitionError

Number = int | float
Amount = int | str  # an integer, or "{param}": a swept parameter's value


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class Resources(Model):
    """The node this run uses (default: the whole machine)."""

    cpus: int | None = Field(None, ge=1)
    gpus: int | None = Field(None, ge=0)
    memory: int | str | None = None
    nodes: int = Field(1, ge=1)


class Options(Model):
    """Run options passed to ``shoal.run`` (see the README's list)."""

    policy: Literal["backfill", "waves", "adaptive", "non-adaptive"] | None = None
    order: Literal["fifo", "largest"] | None = None
    reserve_after: Number | None = None
    pin: bool | Literal["fold"] | None = None
    launcher: str | None = None
    prefetch: int | None = Field(None, ge=0)
    stop_mode: Literal["cancel", "finish"] | None = None
    retries: int | None = Field(None, ge=0)
    backoff: Number | dict[str, Number] | None = None
    retry_on: list[str] | str | None = None
    base: str | None = None
    state_dir: str | None = None


class Group(Model):
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


class Retry(Model):
    """What a ``retry`` action changes: ``x2`` scales, a number sets."""

    timeout: Number | str | None = None
    memory: int | str | None = None
    cpus: int | None = Field(None, ge=1)
    attempts: int = Field(3, ge=1)


TRIGGERS = (
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
)
ACTIONS = ("submit", "retry", "cancel", "stop", "grow", "shrink", "log")


class Rule(Model):
    """``on`` a trigger, do one action (``submit``, ``retry``, ``cancel``, ``stop``, ``log``)."""

    on: Literal[
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
    group: str | None = None
    seconds: Number | None = Field(None, gt=0)
    when: str | None = None
    submit: str | None = None
    retry: Retry | bool | None = None
    cancel: str | None = None
    stop: Literal["drain", "now"] | bool | None = None
    grow: int | None = None
    shrink: int | None = None
    log: str | None = None
    times: int | None = Field(None, ge=1)
    every: int = Field(1, ge=1)
    label: str | None = None


class Config(Model):
    """A whole shoal config file."""

    name: str | None = None
    resources: Resources = Resources()
    options: Options = Options()
    groups: dict[str, Group]
    rules: list[Rule] = []


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
    return src.where(full) + f": {message}{shown}"


def _is_union_tag(part: Any) -> bool:
    """pydantic adds the member type to the location of union errors ('int', 'str' ...)."""
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool", "list[str]", "dict[str,float]")
        or part.startswith(("function-", "literal[", "dict[", "list[", "Retry", "Resources"))
    )


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys valid at ``loc`` inside ``model`` (following nested models, dicts, lists)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                for f in current.model_fields.values():
                    if f.alias == part:
                        info = f
            current = info.annotation if info is not None else None
        current = _inner_model(current, part)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _inner_model(annotation: Any, part: Any) -> Any:
    args = getattr(annotation, "__args__", ())
    for a in (annotation, *args):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    for a in args:  # dict[str, Group] / list[Rule]
        inner = _inner_model(a, part)
        if inner is not None:
            return inner
    return None


def check(model: type[Model], data: Any, src: Source, prefix: Loc = ()) -> Any:
    """Validate ``data``; every problem is listed with its file, line and key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            line = _explain(dict(e), model, src, prefix)
            if line not in problems:
                problems.append(line)
        more = f"\n(and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DefinitionError("\n".join(problems[:10]) + more) from None
