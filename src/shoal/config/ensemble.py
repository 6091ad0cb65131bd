"""An ensemble read from a config file: checked groups of tasks, and the rules that steer them.

Every format (shoal's own, Ensemble Launcher JSON, ensemble-python YAML) is turned into one
:class:`Ensemble`. Its groups expand into shoal tasks on demand: :meth:`Ensemble.workflow`
builds the workflow of the groups that start with the run, and a ``submit`` rule builds a
group's tasks when it fires. Tasks of a group carry the group's name as their first tag, so
rules, statistics and ``shoal status`` see the group.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
import string
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.config.source import Loc, Source
from shoal.config.sweep import MAX_TASKS, Sweep
from shoal.core.resources import Node, Pool
from shoal.errors import DefinitionError
from shoal.spec.options import Options, parse_memory
from shoal.spec.refs import StoredRef
from shoal.spec.request import Request
from shoal.spec.task import TASK_DIR, Task, check_command, placeholders, render_command

SWEPT = ("cpus", "gpus", "ranks", "priority", "timeout", "memory")  # may be "{param}"
INDEX = "index"  # a placeholder every group has: the task's position in its group
_KEEP = {TASK_DIR[1:-1]: TASK_DIR}  # workdir: '{task_dir}' stays, for the run to fill in


@dataclass
class Group:
    """One group, checked: what each task runs, its sweep and its options."""

    name: str
    loc: Loc
    src: Source
    template: str | None
    fn: Callable[..., Any] | None
    function: str | None
    args: dict[str, Any]
    sweep: Sweep
    count: int
    options: dict[str, Any]  # Options.merged keys; values of SWEPT keys may be "{param}"
    keys: dict[str, Loc]  # option -> where it was written
    duration: float | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    each: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    start: bool = True
    nodes: int = 1
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # options from a row
    shaped: tuple[str, ...] = ()  # the parameters ``derive`` reads
    tag: str = ""  # what rules call the group (its name unless entries share one)
    _cache: dict[tuple[Any, ...], Options] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.tag = self.tag or self.name

    @property
    def size(self) -> int:
        return len(self.sweep) * self.count

    @functools.cached_property
    def swept(self) -> dict[str, str]:
        """Options whose value is a swept parameter: option -> parameter."""
        return {
            k: v[1:-1]
            for k, v in self.options.items()
            if k in SWEPT and isinstance(v, str) and _is_ref(v)
        }

    def rows(self) -> Iterator[dict[str, Any]]:
        """The parameter values of each task, in order (``count`` copies of each point)."""
        if self.count == 1:
            yield from self.sweep
            return
        for row in self.sweep:
            for _ in range(self.count):
                yield row

    def row(self, i: int) -> dict[str, Any]:
        return self.sweep.row(i // self.count)

    @functools.cached_property
    def varies(self) -> bool:
        """Whether tasks of the group differ in their options."""
        return bool(self.swept) or self.derive is not None

    def task_options(self, row: dict[str, Any], index: int) -> Options:
        """The options of one task, checked once per distinct combination of values (one
        combination, the key ``()``, when nothing varies)."""
        swept = self.swept
        derived = self.derive(row) if self.derive is not None else None
        key = tuple(row[p] for p in swept.values()) if swept else ()
        if derived:
            key += tuple(derived.values())
        opts = self._cache.get(key)
        if opts is None:  # a new combination of option values: check it once
            values = {k: (row[swept[k]] if k in swept else v) for k, v in self.options.items()}
            if derived:
                values.update(derived)
            opts = self._cache[key] = self._make(values, index)
        return opts

    def _make(self, values: dict[str, Any], index: int) -> Options:
        where_text = f"group {self.name!r}"
        try:
            return Options().merged(where_text, **values)
        except DefinitionError as err:
            text = str(err).removeprefix(where_text + ": ")
            key = next((k for k in values if text.startswith(k + " ")), None)
            key = key or next((k for k in values if k in text), next(iter(self.swept), "cpus"))
            where = self.src.where(self.keys.get(key, (*self.loc, key)))
            what = f"group {self.name!r}"
            if self.varies:
                what = f"task {index} of {what}" if index >= 0 else f"tasks of {what}"
            raise DefinitionError(f"{where}: {what}: {text}") from None

    def fields(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        """What a command's placeholders may use: fixed args, the row, and ``index``."""
        if self.template is not None and self.args:
            return {**self.args, **row, INDEX: index}
        return {**row, INDEX: index}

    def command_line(self, row: dict[str, Any], index: int) -> str:
        """What task ``index`` runs, as a person would type it."""
        values = self.fields(row, index)
        if self.template is not None:
            argv, shell = render_command(self.template, values)
            return argv[0] if shell else " ".join(_shown(a) for a in argv)
        call = {**self.args, **row}
        inner = ", ".join(f"{k}={v!r}" for k, v in call.items())
        return f"{self.function}({inner})"

    def request(self, row: dict[str, Any], index: int) -> str:
        return self.task_options(row, index).request.describe()

    def shapes(self) -> dict[Options, int]:
        """The distinct options of the group's tasks, with how many tasks have each (from
        the sweep's columns: the rows are not made)."""
        if not self.varies:
            return {self.task_options({}, 0): self.size}
        names = sorted(set(self.swept.values()) | set(self.shaped) & set(self.sweep.names))
        out: dict[Options, int] = {}
        for combo, n in self.sweep.tally(names).items():
            opts = self.task_options(dict(zip(names, combo, strict=True)), -1)
            out[opts] = out.get(opts, 0) + n * self.count
        return out

    def core_hours(self) -> float | None:
        """Core-hours of the whole group if every task takes ``duration`` (None: unknown)."""
        if self.duration is None:
            return None
        return sum(
            n * self.duration * o.request.cpus * o.request.ranks / 3600
            for o, n in self.shapes().items()
        )

    def make(self, i: int, row: dict[str, Any], kwargs: dict[str, Any] | None = None) -> Task:
        """Task ``i`` of the group (not yet in any workflow)."""
        opts = self.task_options(row, i)
        values = self.fields(row, i)
        workdir = self.workdir.format_map({**values, **_KEEP}) if self.workdir else None
        env = {k: v.format_map(values) for k, v in self.env.items()} if self.env else None
        if self.template is not None:
            kw = {k: values[k] for k in self._placeholders}
            if kwargs:
                kw.update(kwargs)
            return Task(
                "command", opts, template=self.template, kwargs=kw, workdir=workdir, env=env
            )
        assert self.fn is not None
        call = {**self.args, **row, **(kwargs or {})}
        return Task("python", opts, fn=self.fn, kwargs=call)

    def direct(self) -> list[Task] | None:
        """All tasks at once, for the common big case: a command whose placeholders are the
        swept parameters, with the same options for all and nothing else per task (the row
        itself becomes the task's values). None when the general path is needed."""
        if (
            self.template is None
            or self.workdir
            or self.env
            or self.inputs
            or self.each
            or self.args
            or set(self._placeholders) != set(self.sweep.names)
        ):
            return None
        template = self.template
        if not self.varies:
            opts = self.task_options({}, 0)
            return [Task("command", opts, template=template, kwargs=row) for row in self.rows()]
        options = self.task_options
        return [
            Task("command", options(row, i), template=template, kwargs=row)
            for i, row in enumerate(self.rows())
        ]

    @functools.cached_property
    def _placeholders(self) -> tuple[str, ...]:
        return tuple(sorted(placeholders(self.template))) if self.template else ()


def check_size(n: int, limit: int, where: str, what: str) -> None:
    """Refuse a run of more than ``limit`` tasks, before any of them is made."""
    if n > limit:
        shown = f"{n:,}" if n < 10**15 else f"{float(n):.3g}"
        raise DefinitionError(
            f"{where}: {what} make {shown} tasks, more than the limit of {limit:,} tasks per "
            "run; nothing was built. Make the sweep smaller, or raise the limit with "
            "--max-tasks N (in shoal's own format also max_tasks: N at the top of the file)"
        )


def _is_ref(value: str) -> bool:
    return value.startswith("{") and value.endswith("}") and value[1:-1].isidentifier()


def _shown(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _spec(module: str, folder: str) -> importlib.machinery.ModuleSpec | None:
    """Where ``module`` (dotted) would be imported from, with ``folder`` searched first,
    without importing it or its parent packages (``importlib.util.find_spec`` would run the
    parents' ``__init__``)."""
    path: list[str] | None = [folder, *sys.path]
    spec = None
    for i, part in enumerate(module.split(".")):
        name = ".".join(module.split(".")[: i + 1])
        if name in sys.modules:  # already imported (shoal itself, the standard library...)
            spec = getattr(sys.modules[name], "__spec__", None)
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None and i == 0:
                spec = importlib.util.find_spec(part)  # built-in and frozen modules
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    return spec


def _top_level(tree: ast.Module) -> tuple[set[str], bool]:
    """Names a module defines at its top level, and whether it may define others we cannot
    see (``from x import *``, a module ``__getattr__``)."""
    names: set[str] = set()
    open_ended = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    open_ended = True
                names.add(alias.asname or alias.name.split(".")[0])
        else:  # if/try/with blocks: names defined inside them count too
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(inner.name)
                elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
                elif isinstance(inner, ast.alias):
                    names.add(inner.asname or inner.name.split(".")[0])
    return names, open_ended or "__getattr__" in names


def find_function(path: str, src: Source, loc: Loc) -> str:
    """Check ``package.module:callable`` without importing anything (``shoal plan``): the
    module's file exists and defines the name at its top level. Returns the file."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise src.error(loc, f"write the function as 'package.module:callable', got {path!r}")
    spec = _spec(module, str(src.base.resolve()))
    if spec is None:
        raise src.error(
            loc, f"cannot find module {module!r}. Is it installed, or next to the file?"
        )
    origin = spec.origin or ""
    if not origin.endswith(".py"):
        return origin or module  # compiled or built in: its names are known only by importing
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (OSError, SyntaxError, ValueError) as err:
        raise src.error(loc, f"cannot read module {module!r} ({origin}): {err}") from None
    names, open_ended = _top_level(tree)
    first = attr.split(".")[0]
    if first not in names and not open_ended:
        from shoal.config.source import suggest

        shown = sorted(n for n in names if not n.startswith("_"))
        raise src.error(loc, f"module {module!r} has no {attr!r}{suggest(first, shown)}")
    return origin


def load_function(path: str, src: Source, loc: Loc) -> Callable[..., Any]:
    """Import ``package.module:callable`` (the config file's folder is on the path)."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise src.error(loc, f"write the function as 'package.module:callable', got {path!r}")
    folder = str(src.base.resolve())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise src.error(
            loc, f"cannot import module {module!r}: {err}. Is it installed, or next to the file?"
        ) from None
    finally:
        if added:
            sys.path.remove(folder)
    target: Any = mod
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(mod) if not n.startswith("_")]
            from shoal.config.source import suggest

            raise src.error(loc, f"module {module!r} has no {attr!r}{suggest(part, names)}")
        target = getattr(target, part)
    fn = getattr(target, "fn", target)  # a @shoal.task factory: its function
    if not callable(fn):
        raise src.error(loc, f"{path!r} is not callable")
    return fn  # type: ignore[no-any-return]


@dataclass
class Ensemble:
    """What a config file describes, checked and ready to build."""

    name: str
    src: Source
    format: str  # "shoal", "ensemble-launcher" or "ensemble-python"
    groups: dict[str, Group]
    resources: dict[str, Any] = field(default_factory=dict)  # cpus, gpus, memory
    options: dict[str, Any] = field(default_factory=dict)  # run options
    rules: list[Any] = field(default_factory=list)  # shoal.config.rules.Action
    notes: list[str] = field(default_factory=list)  # warnings for the user
    nodes: int = 1
    max_tasks: int = MAX_TASKS  # the most tasks of all groups together

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups.values() if g.start)

    def pool(self) -> Pool:
        """The node(s) the run would get (the local machine unless resources say otherwise)."""
        import os
        import socket

        from shoal.backends.env import detect_gpus

        cpus = self.resources.get("cpus") or len(os.sched_getaffinity(0))
        gpus = self.resources.get("gpus")
        if gpus is None:
            gpus = detect_gpus()
        mem = self.resources.get("memory")
        memory = parse_memory(mem) if mem is not None else 0
        if self.nodes == 1:  # this machine, named as LocalBackend names it in the run
            names = [socket.gethostname() or "localhost"]
        else:  # the nodes of an allocation, whose names are known only inside it
            names = [f"node{i}" for i in range(self.nodes)]
        return Pool(tuple(Node.sized(n, cpus, gpus, memory) for n in names))

    def check(self, pool: Pool | None = None) -> None:
        """Refuse requests that no node can hold, naming the group, the key and the node."""
        used = self.used()
        sizes = sorted(((g.size, n) for n, g in self.groups.items() if n in used), reverse=True)
        shown = ", ".join(f"{n} {size:,}" for size, n in sizes[:3])
        check_size(
            sum(size for size, _ in sizes),
            self.max_tasks,
            str(self.src.path),
            f"the groups ({shown}{', ...' if len(sizes) > 3 else ''})",
        )
        pool = pool or self.pool()
        for g in self.groups.values():
            if g.nodes > len(pool.nodes):
                message = (
                    f"group {g.name!r} asks for {g.nodes} nodes, but this run has {len(pool.nodes)}"
                )
                if g.name in used:
                    raise DefinitionError(f"{g.src.where(g.keys.get('nodes', g.loc))}: {message}")
                self.notes.append(f"{message}; it is never submitted, so that is harmless")
            for req in dict.fromkeys(o.request for o in g.shapes()):
                why = pool.refusal(req)
                if why is None:
                    continue
                key = _blame(req, pool)
                where = g.src.where(g.keys.get(key, (*g.loc, key)))
                what = f"some tasks of group {g.name!r}" if g.varies else f"group {g.name!r}"
                message = f"{what} can never run: {why}"
                if g.name in used:
                    raise DefinitionError(
                        f"{where}: {message}. Ask for less, or give the run more "
                        "(resources: cpus/gpus)"
                    )
                self.notes.append(f"{message}; it is never submitted, so that is harmless")

    def used(self) -> set[str]:
        """The groups that run: those that start, and those a rule submits."""
        out = {n for n, g in self.groups.items() if g.start}
        tags = {a.target for a in self.rules if a.kind == "submit" and a.target}
        out |= {n for n, g in self.groups.items() if g.tag in tags}
        return out

    def tagged(self, tag: str) -> list[Group]:
        """The groups a rule means by ``tag``."""
        return [g for g in self.groups.values() if g.tag == tag]

    # -- building (the workflow itself: shoal.config.build) ---------------------------------
    @staticmethod
    def needs(g: Group) -> list[str]:
        return list(dict.fromkeys([*g.after, *([g.each] if g.each else []), *g.inputs.values()]))

    def later(self, g: Group, ids: dict[str, list[int]]) -> list[Task]:
        """The tasks of ``g`` submitted by a rule: earlier groups are named by task id."""
        tasks = []
        for i, row in enumerate(g.rows()):
            kwargs: dict[str, Any] = {}
            for name, up in g.inputs.items():
                kwargs[name] = (
                    StoredRef(ids[up][i]) if up == g.each else [StoredRef(x) for x in ids[up]]
                )
            t = g.make(i, row, kwargs or None)
            links = [*(x for up in g.after for x in ids[up])]
            if g.each:
                links.append(ids[g.each][i])
            if links:
                t.links = tuple(dict.fromkeys((*t.links, *links)))
            tasks.append(t)
        return tasks

    def run_options(self) -> dict[str, Any]:
        """Options for ``shoal.run``: the node's size and the file's run options."""
        if self.nodes > 1:
            raise DefinitionError(
                f"{self.src.where(('resources', 'nodes'))}: {self.nodes} nodes: the local "
                "backend runs on this one machine. Use nodes > 1 with shoal plan, or run on a "
                "cluster backend"
            )
        out = {k: v for k, v in self.options.items() if v is not None}
        for k in ("cpus", "gpus", "memory"):
            if self.resources.get(k) is not None:
                out[k] = self.resources[k]
        return out

    # -- what would run -----------------------------------------------------------------------
    def plan(self, first: int = 3) -> dict[str, Any]:
        """A summary of what would run: per group its size, first commands and resources."""
        groups = []
        hours = 0.0
        unknown: list[str] = []
        for g in self.groups.values():
            shown = []
            for i in range(min(first, g.size)):
                row = g.row(i)
                shown.append(g.command_line(row, i))
            ch = g.core_hours()
            if g.start and ch is not None:
                hours += ch
            elif g.start:
                unknown.append(g.name)
            entry: dict[str, Any] = {
                "group": g.name,
                "tasks": g.size,
                "starts": "with the run" if g.start else "when a rule submits it",
                "each": g.request(g.row(0), 0)
                if not g.varies
                else "varies: "
                + ", ".join(
                    o.request.describe()
                    for o in sorted(g.shapes(), key=lambda o: (o.request, o.timeout or 0))
                ),
                "first": shown,
            }
            if g.duration is not None:
                entry["duration"] = g.duration
                entry["core_hours"] = round(ch, 3) if ch is not None else None
            if g.nodes > 1:
                entry["nodes"] = g.nodes
            needs = self.needs(g)
            if needs:
                entry["after"] = needs
            groups.append(entry)
        out: dict[str, Any] = {
            "name": self.name,
            "file": str(self.src.path),
            "format": self.format,
            "tasks": self.size,
            "groups": groups,
            "rules": [a.describe() for a in self.rules],
            "resources": self.pool().nodes[0].describe()
            + (f" × {self.nodes}" if self.nodes > 1 else ""),
        }
        if any(g.duration is not None and g.start for g in self.groups.values()):
            out["core_hours"] = round(hours, 3)
            if unknown:
                out["core_hours_without"] = unknown  # groups with no duration to count
        if self.notes:
            out["notes"] = list(dict.fromkeys(self.notes))
        return out


def _blame(req: Request, pool: Pool) -> str:
    """The key of a group that makes ``req`` too large for every node."""
    nodes = pool.nodes
    if req.gpus and req.gpus * req.ranks > max(len(n.gpus) for n in nodes) * len(nodes):
        return "gpus"
    if req.memory and any(n.memory for n in nodes) and req.memory > max(n.memory for n in nodes):
        return "memory"
    if req.cpus > max(len(n.cores) for n in nodes):
        return "cpus"
    return "ranks" if req.ranks > 1 else "cpus"


def _fields(text: str, where: str) -> set[str]:
    """The placeholder names of ``text``; dotted or indexed ones are refused (a config file's
    values are plain)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise DefinitionError(f"{where}: {text!r} is malformed: {err}") from None
    names = set()
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise DefinitionError(
                f"{where}: {{{name}}}: a placeholder is a plain parameter name, like {{T}}"
                + ("" if name else "; write {{ and }} for literal braces")
            )
        names.add(name)
    return names


def check_template(
    g: Group, params: set[str], where: Callable[[str], str], command_key: str = "command"
) -> None:
    """Every ``{placeholder}`` of a command, ``workdir`` and ``env`` must be a swept
    parameter, an input or ``index``; ``where(key)`` names the file, line and key."""
    if INDEX in params:
        raise DefinitionError(
            f"{where('sweep')}: a parameter may not be called {INDEX!r}: {{{INDEX}}} is the "
            "task's position in its group; rename the parameter"
        )
    if g.template is not None:
        names = _fields(g.template, where(command_key))
        try:
            check_command(g.template)
        except DefinitionError as err:
            raise DefinitionError(f"{where(command_key)}: {err}") from None
        missing = sorted(names - params - {INDEX} - set(g.inputs))
        if missing:
            known = sorted(params | {INDEX} | set(g.inputs))
            raise DefinitionError(
                f"{where(command_key)}: the command uses {{{missing[0]}}}, but group {g.name!r} "
                f"has no parameter {missing[0]!r}; its parameters are {', '.join(known)}. Add it "
                "to the sweep"
            )
    for key, text in [("workdir", g.workdir or ""), *((f"env.{k}", v) for k, v in g.env.items())]:
        for name in _fields(text, where(key)):
            if name not in params | {INDEX} | (set(_KEEP) if key == "workdir" else set()):
                raise DefinitionError(
                    f"{where(key)}: {text!r} uses {{{name}}}, which is not a parameter of group "
                    f"{g.name!r}"
                )
