"""shoal's own config format (see :mod:`shoal.config.model` and docs/config.md) -> Ensemble."""

from __future__ import annotations

import math
from typing import Any

from shoal.config import model
from shoal.config.ensemble import (
    Ensemble,
    Group,
    check_size,
    check_template,
    find_function,
    load_function,
)
from shoal.config.rules import Action, scale
from shoal.config.source import Loc, Source, suggest
from shoal.config.sweep import MAX_TASKS, combine, length, values
from shoal.errors import DefinitionError

OPTION_KEYS = ("memory", "timeout", "retries", "backoff", "retry_on", "priority")


def ensemble(src: Source) -> Ensemble:
    # Top-level keys starting with "x-" are the file's own (YAML anchors to merge with <<).
    data = {k: v for k, v in src.data.items() if not str(k).startswith("x-")}
    cfg: model.ConfigModel = model.check(model.ConfigModel, data, src)
    if not cfg.groups:
        raise src.error(("groups",), "there are no groups: nothing to run")
    limit = src.max_tasks or cfg.max_tasks
    groups = {name: group(src, name, g, limit) for name, g in cfg.groups.items()}
    ens = Ensemble(
        name=cfg.name or src.path.stem,
        src=src,
        format="shoal",
        groups=groups,
        resources=cfg.resources.model_dump(exclude={"nodes"}, exclude_none=True),
        options=cfg.options.model_dump(exclude_none=True),
        nodes=cfg.resources.nodes,
        max_tasks=limit,
    )
    if not src.imports and any(g.function for g in groups.values()):
        ens.notes.append(
            "functions were found without importing their modules: shoal plan runs none of "
            "their code, so what a module does when imported is checked only by shoal run"
        )
    links(ens, cfg)
    ens.rules = [rule(src, i, r, ens) for i, r in enumerate(cfg.rules)]
    return ens


def _estimate(g: model.GroupModel) -> list[int]:
    """The number of values of each block of the sweep (zipped parameters: one block), from
    the expressions, before any value is made; unknown counts (files) are taken as 1."""
    lengths = {p: length(raw) or 1 for p, raw in g.sweep.items()}
    zipped = [list(g.sweep)] if g.relation == "zip" and g.sweep else g.zip_
    blocks = [max((lengths.get(p, 1) for p in z), default=1) for z in zipped]
    inside = {p for z in zipped for p in z}
    return blocks + [n for p, n in lengths.items() if p not in inside]


def group(src: Source, name: str, g: model.GroupModel, limit: int = MAX_TASKS) -> Group:
    loc: Loc = ("groups", name)
    blocks = _estimate(g)
    parts = [" × ".join(f"{n:,}" for n in blocks) + " values"] if blocks else []
    parts += [f"count {g.count:,}"] if g.count > 1 else []
    key = "sweep" if blocks else "count"
    what = f"group {name!r}: {' × '.join(parts)} would"
    check_size(math.prod(blocks) * g.count, limit, src.where((*loc, key)), what)
    if (g.command is None) == (g.function is None):
        raise src.error(loc, "give a group either command: '...' or function: 'module:callable'")
    if g.args and g.command is not None:
        raise src.error((*loc, "args"), "args are for function groups; commands use the sweep")
    base = src.base
    columns = {p: values(raw, src.where((*loc, "sweep", p)), base) for p, raw in g.sweep.items()}
    if g.relation == "zip" and g.zip_:
        raise src.error(
            (*loc, "zip"),
            "give relation: zip (all parameters one-to-one) or zip: [[...]] lists, not both",
        )
    zipped = [list(g.sweep)] if g.relation == "zip" and g.sweep else g.zip_
    sweep = combine(columns, zipped, src.where((*loc, "zip" if g.zip_ else "sweep")))
    check_size(len(sweep) * g.count, limit, src.where((*loc, "sweep")), f"group {name!r} would")
    tags = [g.tags] if isinstance(g.tags, str) else list(g.tags)
    opts: dict[str, Any] = {
        "name": name,
        "cpus": g.cpus,
        "gpus": g.gpus,
        "ranks": g.ranks,
        "tags": (name, *(t for t in tags if t != name)),
    }
    for key in OPTION_KEYS:
        value = getattr(g, key)
        if value is not None:
            opts[key] = value
    keys: dict[str, Loc] = {k: (*loc, k) for k in (*opts, "nodes")}
    if g.duration is not None:  # expected seconds: the scheduler starts longer tasks first
        opts["estimate"] = float(g.duration)
        keys["estimate"] = (*loc, "duration")
    for key, value in opts.items():
        swept = key in ("cpus", "gpus", "ranks", "priority", "timeout")
        ref = isinstance(value, str) and value.startswith("{") and value.endswith("}")
        if isinstance(value, str) and (swept or (key == "memory" and ref)):
            param = value[1:-1] if ref else None
            if param is None or param not in columns:
                hint = suggest(param or value, columns) if columns else ""
                raise src.error(
                    (*loc, key),
                    f"must be a number, or '{{param}}' naming a swept parameter; got {value!r}"
                    + hint,
                )
    fn = None
    if g.function and src.imports:
        fn = load_function(g.function, src, (*loc, "function"))
    elif g.function:
        find_function(g.function, src, (*loc, "function"))
    out = Group(
        name=name,
        loc=loc,
        src=src,
        template=g.command,
        fn=fn,
        function=g.function,
        args=dict(g.args),
        sweep=sweep,
        count=g.count,
        options=opts,
        keys=keys,
        duration=float(g.duration) if g.duration is not None else None,
        workdir=g.workdir,
        env={k: str(v) for k, v in g.env.items()},
        after=(g.after,) if isinstance(g.after, str) else tuple(g.after),
        each=g.each,
        inputs=dict(g.inputs),
        start=g.start,
    )
    check_template(out, set(columns), lambda key: src.where((*loc, *key.split(".", 1))))
    out.task_options(sweep.row(0) if len(sweep) else {}, 0)  # bad option values fail here
    return out


def links(ens: Ensemble, cfg: model.ConfigModel) -> None:
    """``after``, ``each`` and ``inputs`` name groups that exist, without a cycle."""
    src = ens.src
    for g in ens.groups.values():
        pair = ens.groups.get(g.each or "")
        if pair is not None and not g.sweep.names and g.count == 1:
            g.count = pair.size  # each: with no sweep of its own: one task per upstream task
    for name, g in ens.groups.items():
        loc: Loc = ("groups", name)
        named = [("after", a) for a in g.after] + [("inputs", v) for v in g.inputs.values()]
        if g.each:
            named.append(("each", g.each))
        for key, up in named:
            if up not in ens.groups:
                raise src.error(
                    (*loc, key),
                    f"no group named {up!r}{suggest(up, ens.groups)} "
                    f"Groups: {', '.join(ens.groups)}",
                )
            if up == name:
                raise src.error((*loc, key), f"group {name!r} cannot wait for itself")
            if g.start and not ens.groups[up].start:
                raise src.error(
                    (*loc, key),
                    f"group {name!r} starts with the run, but {up!r} only starts when a rule "
                    f"submits it; give {name!r} start: false and submit it from a rule too",
                )
        if g.each and ens.groups[g.each].size != g.size:
            raise src.error(
                (*loc, "each"),
                f"each: {g.each} pairs task i with task i of {g.each!r}, but {name!r} has "
                f"{g.size} tasks and {g.each!r} has {ens.groups[g.each].size}; make the counts "
                "equal, or use after: to wait for the whole group",
            )
        if g.template and g.inputs:
            raise src.error(
                (*loc, "inputs"),
                "inputs pass results to a function; a command group uses after: or each:",
            )
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise src.error(
                ("groups", name), f"the groups wait for each other in a cycle: {' -> '.join(cycle)}"
            )
        state[name] = 1
        for up in Ensemble.needs(ens.groups[name]):
            visit(up, [*path, name])
        state[name] = 2

    for name in ens.groups:
        visit(name, [])


def rule(src: Source, i: int, r: model.RuleModel, ens: Ensemble) -> Action:
    loc: Loc = ("rules", i)
    where = src.where(loc)
    chosen = [k for k in model.ACTIONS if getattr(r, k) not in (None, False)]
    if len(chosen) != 1:
        raise src.error(
            loc,
            f"a rule does one thing: give exactly one of {', '.join(model.ACTIONS)}"
            + (f" (it has {', '.join(chosen)})" if chosen else ""),
        )
    kind = chosen[0]
    groups = ens.groups
    for key in ("group", "submit", "cancel"):
        value = getattr(r, key)
        if value is not None and value not in groups:
            raise src.error(
                (*loc, key),
                f"no group named {value!r}{suggest(value, groups)} Groups: {', '.join(groups)}",
            )
    trigger = r.on
    when: str | None = r.when
    if trigger == "group-finished":
        if r.group is None:
            raise src.error(loc, "on: group-finished needs group: NAME")
        trigger, when = "metric", "total > 0 and finished == total"
    elif trigger == "metric" and not r.when:
        raise src.error(loc, "on: metric needs when: '...', e.g. when: 'failed > 10'")
    elif r.when is not None and trigger != "metric":
        raise src.error((*loc, "when"), "when: is for on: metric rules")
    if trigger == "interval" and r.seconds is None:
        raise src.error(loc, "on: interval needs seconds: N")
    if r.seconds is not None and trigger != "interval":
        raise src.error((*loc, "seconds"), "seconds: is for on: interval rules")
    if r.group and trigger in ("start", "end", "idle", "interval"):
        raise src.error((*loc, "group"), f"on: {trigger} is not about the tasks of a group")
    if kind == "retry" and not trigger.startswith("task-"):
        raise src.error((*loc, "retry"), "retry acts on the task of a task-failed rule")
    retry: dict[str, Any] = {}
    attempts = 3
    if isinstance(r.retry, model.RetryModel):
        attempts = r.retry.attempts
        for key in ("timeout", "memory", "cpus"):
            spec = getattr(r.retry, key)
            if spec is not None:
                retry[key] = scale(src.where((*loc, "retry", key)), key, spec)
    stop = r.stop
    if kind in ("grow", "shrink"):
        ens.notes.append(f"{where}: {kind}: the local backend cannot resize; it will be ignored")
    label = r.label or f"rule {i + 1} ({r.on}: {kind})"
    try:
        from shoal.spec.expr import compile_condition

        if trigger == "metric" and when:
            compile_condition(when, where)
    except DefinitionError as err:
        raise DefinitionError(str(err)) from None
    return Action(
        label=label,
        trigger=trigger,
        kind=kind,
        where=where,
        tags=(r.group,) if r.group else (),
        seconds=float(r.seconds) if r.seconds is not None else None,
        when=when,
        target=r.submit or r.cancel,
        drain=stop != "now",
        retry=retry,
        attempts=attempts,
        message=r.log or "",
        times=r.times,
        skip=r.every - 1,
    )


TOP = ("name", "resources", "options", "groups", "rules", "max_tasks")


def override(src: Source, parts: list[str | int], value: Any, text: str) -> None:
    """``--set relax.cpus=4`` (a group's key) or ``--set resources.cpus=8`` (a top-level key)."""
    from shoal.config.source import assign

    groups = src.data.get("groups")
    names = list(groups) if isinstance(groups, dict) else []
    if parts[0] in names:
        assign(src, ["groups", *parts], value, text)
    elif parts[0] in TOP:
        assign(src, parts, value, text)
    else:
        raise DefinitionError(
            f"--set {text}: {parts[0]!r} is neither a group nor a top-level key"
            f"{suggest(parts[0], [*names, *TOP])} Groups: {', '.join(names) or 'none'}"
        )
