"""What runs, built from a checked ensemble: the workflow of the groups that start with the run,
each group after the groups it needs, with the file's rules attached as steering rules.

It sits above :mod:`shoal.config.ensemble` (the groups) and :mod:`shoal.config.rules` (the
actions and their handler, which builds later groups through the ensemble), and imports both.
"""

from __future__ import annotations

from typing import Any

from shoal.config.ensemble import Ensemble, Group
from shoal.config.rules import Fire
from shoal.spec.task import Task
from shoal.spec.workflow import Workflow


def workflow(ens: Ensemble) -> Workflow:
    """The workflow of the groups that start with the run, with the rules attached."""
    wf = Workflow(ens.name)
    built: dict[str, list[Task]] = {}
    for g in _ordered(ens):
        if not g.start:
            continue
        built[g.name] = _build(g, built)
        wf.add(*built[g.name])
    attach(ens, wf)
    return wf


def attach(ens: Ensemble, wf: Workflow) -> None:
    """Register every action of ``ens`` as a rule of ``wf``."""
    for a in ens.rules:
        opts: dict[str, Any] = {"label": a.label}
        if a.tags:
            opts["tags"] = a.tags[0] if a.trigger == "metric" else a.tags
        if a.seconds is not None:
            opts["seconds"] = a.seconds
        if a.trigger == "metric":
            opts["when"] = a.when
            opts["repeat"] = a.repeat
        wf.on(a.trigger, **opts)(Fire(a, ens))


def _ordered(ens: Ensemble) -> list[Group]:
    """Groups after the groups they need (definitions are checked to have no cycles)."""
    done: dict[str, Group] = {}

    def visit(g: Group) -> None:
        if g.name in done:
            return
        for up in ens.needs(g):
            visit(ens.groups[up])
        done[g.name] = g

    for g in ens.groups.values():
        visit(g)
    return list(done.values())


def _build(g: Group, built: dict[str, list[Task]]) -> list[Task]:
    """The tasks of ``g`` that start with the run, wired to the groups ``built`` before it."""
    tasks = g.direct() or []
    outs = {name: [t.out for t in built[up]] for name, up in g.inputs.items() if up != g.each}
    for i, row in enumerate(() if tasks else g.rows()):
        kwargs: dict[str, Any] = dict(outs)
        for name, up in g.inputs.items():
            if up == g.each:
                kwargs[name] = built[up][i].out
        t = g.make(i, row, kwargs or None)
        if g.each:
            t.after(built[g.each][i])
        tasks.append(t)
    for up in g.after:
        ups = built[up]
        for t in tasks:
            t.after(*ups)
    return tasks
