"""Workflows collect tasks; ``compile`` checks them and lowers them to plain records.

Validation happens before anything runs, and refuses with a clear message and nothing
half-started: references to tasks outside the workflow, cycles (the message lists the cycle),
functions or arguments that cannot be serialized. Requests that no node can satisfy are
checked by the run, which knows the nodes.
"""

from __future__ import annotations

import importlib.machinery
import pickle
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle  # type: ignore[import-untyped]

from shoal.errors import DefinitionError
from shoal.spec.options import Options
from shoal.spec.steer import Rule, Strategy, Tracker, make_rule, make_tracker
from shoal.spec.task import Task, open_workflows

if TYPE_CHECKING:
    from shoal.runtime.run import Run


class Workflow:
    """A named collection of tasks and nested workflows.

    Use it as a context manager (tasks created inside are added) or call :meth:`add`.
    """

    def __init__(
        self, name: str = "workflow", *, track: dict[str, str | Tracker] | None = None
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError("a workflow needs a non-empty name")
        bad = set(name) & set('/\\:*?"<>|\0')
        if bad:
            raise DefinitionError(
                f"workflow name {name!r} contains {''.join(sorted(bad))!r}; it names the run "
                "directory, so use letters, digits, '-', '_' or '.'"
            )
        self.name = name
        self.items: list[Task | Workflow] = []
        self._keys: set[int] = set()
        self.own_rules: list[Rule] = []
        self.own_strategies: list[Strategy] = []
        self.own_tracked: dict[str, Tracker] = {}
        if track:
            self.track(**track)
        stack = open_workflows()
        if stack:
            stack[-1].add(self)

    def __enter__(self) -> Workflow:
        open_workflows().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        stack = open_workflows()
        if stack and stack[-1] is self:
            stack.pop()

    def add(self, *items: Task | Workflow | Strategy) -> Workflow:
        """Add tasks, workflows or strategies (each is added once, however often given)."""
        for item in items:
            if isinstance(item, Strategy):
                if not any(item is s for s in self.own_strategies):
                    self.own_strategies.append(item)
                continue
            if not isinstance(item, Task | Workflow):
                raise DefinitionError(
                    f"workflow {self.name!r}: add() takes tasks, workflows or strategies, "
                    f"got {type(item).__name__}"
                )
            if item is self:
                raise DefinitionError(f"workflow {self.name!r} cannot contain itself")
            key = id(item)
            if key not in self._keys:
                self._keys.add(key)
                self.items.append(item)
        return self

    @property
    def tasks(self) -> list[Task]:
        """All tasks, nested workflows flattened, each once, in the order they were added."""
        seen: set[int] = set()
        out: list[Task] = []
        for t in self._walk(set()):
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
        return out

    def has_python(self) -> bool:
        """Whether any task (nested workflows included) is a Python task, not a command."""
        return any(t.kind != "command" for t in self._walk(set()))

    # -- steering ---------------------------------------------------------------------------
    def on(
        self, trigger: str, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn(event, ctl)`` for ``trigger`` (a decorator).

        Triggers: task-started, task-succeeded, task-failed, task-finished, task-cancelled
        (filtered by ``tags=`` and the task-name glob ``name=``); start, end, idle; interval
        (every ``seconds=``); metric (``when="mean(runtime) > 30"`` or a callable over the
        group's statistics, fired each time it becomes true). ``on_error``: 'stop' (default:
        a handler that raises stops the run gracefully) or 'log'. ``label`` names the rule.
        The options are checked by :func:`shoal.spec.steer.make_rule`.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.own_rules.append(make_rule(trigger, fn, **options))
            return fn

        return register

    def track(self, **fields: str | Tracker) -> Workflow:
        """Keep statistics of result fields per tag: ``wf.track(energy="energy")``, or a
        function of the result: ``wf.track(fmax=lambda r: max(r["forces"]))``."""
        for key, spec in fields.items():
            if key in ("runtime", "wait"):
                raise DefinitionError(f"track {key!r}: that name is kept already; choose another")
            self.own_tracked[key] = make_tracker(key, spec)
        return self

    @property
    def rules(self) -> list[Rule]:
        """Rules of this workflow and the ones nested in it."""
        return [r for w in self._workflows() for r in w.own_rules]

    @property
    def strategies(self) -> list[Strategy]:
        return [s for w in self._workflows() for s in w.own_strategies]

    @property
    def tracked(self) -> dict[str, Tracker]:
        out: dict[str, Tracker] = {}
        for w in self._workflows():
            out.update(w.own_tracked)
        return out

    def _workflows(self) -> list[Workflow]:
        out: list[Workflow] = []
        stack: list[Workflow] = [self]
        seen: set[int] = set()
        while stack:
            w = stack.pop()
            if id(w) in seen:
                continue
            seen.add(id(w))
            out.append(w)
            stack.extend(i for i in reversed(w.items) if isinstance(i, Workflow))
        return out

    def _walk(self, active: set[int]) -> Iterator[Task]:
        if id(self) in active:
            raise DefinitionError(f"workflow {self.name!r} contains itself through nesting")
        active.add(id(self))
        for item in self.items:
            if isinstance(item, Task):
                yield item
            else:
                yield from item._walk(active)
        active.discard(id(self))

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.tasks)} tasks>"

    # run() and submit() are conveniences the user expects on the workflow. They reach up into
    # the runtime with a late import; the spec layer itself depends on nothing above it.
    def run(self, **options: Any) -> Run:
        """Run to the end and return the :class:`~shoal.runtime.run.Run` (see ``shoal.run``)."""
        from shoal.runtime.api import run

        return run(self, **options)

    def submit(self, **options: Any) -> Run:
        """Start the run in the background and return its handle at once; ``run.wait()``."""
        from shoal.runtime.api import submit

        return submit(self, **options)


# -- lowering ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Record:
    """One task as plain data: what the store keeps and the runtime dispatches."""

    id: int
    name: str
    kind: str
    options: Options
    deps: tuple[int, ...]
    payload: bytes  # pickled (args, kwargs) with references as StoredRef
    has_refs: bool
    function: int = -1  # index into Plan.functions
    template: str | None = None
    workdir: str | None = None
    env: dict[str, str] | None = None


@dataclass(slots=True)
class Plan:
    name: str
    records: list[Record]
    # (qualified name, cloudpickle payload); functions[i] has the global id first_function + i
    functions: list[tuple[str, bytes]]
    first_function: int = 0


class Functions:
    """The functions a run has seen, so that work added later reuses their ids."""

    def __init__(self) -> None:
        self.index: dict[int, tuple[Callable[..., Any], int]] = {}  # id(fn) -> (fn, global id)
        self.count = 0

    def lookup(self, fn: Callable[..., Any]) -> int:
        hit = self.index.get(id(fn))
        return hit[1] if hit is not None and hit[0] is fn else -1

    def register(self, fn: Callable[..., Any]) -> int:
        fid = self.count
        self.index[id(fn)] = (fn, fid)
        self.count += 1
        return fid


def compile_workflow(
    wf: Workflow,
    first_id: int = 0,
    known: Mapping[int, int] | None = None,
    functions: Functions | None = None,
) -> Plan:
    """Check ``wf`` and lower it. Ids start at ``first_id``.

    Work added to a live run passes ``known`` (handle key -> id of tasks already in the run,
    which the new tasks may use) and the run's ``functions``; stored references (``links``)
    may then name any task id below ``first_id``.
    """
    tasks = wf.tasks
    if not tasks and not (wf.rules or wf.strategies):
        raise DefinitionError(f"workflow {wf.name!r} has no tasks: nothing to run")
    return lower(tasks, wf.name, first_id, known or {}, functions or Functions())


def lower(
    tasks: list[Task],
    name: str,
    first_id: int,
    known: Mapping[int, int],
    functions: Functions,
) -> Plan:
    """Validate ``tasks`` and turn them into records (see :func:`compile_workflow`)."""
    members = {t.key for t in tasks}
    backward = False  # a dependency not older than its dependent (only after() makes one)
    for t in tasks:
        for d in t.deps:
            if d.key >= t.key:
                backward = True
            if d.key not in members and d.key not in known:
                raise DefinitionError(
                    f"task {t.name!r} uses the output of task {d.name!r}, which is not part of "
                    f"workflow {name!r}. Create {d.name!r} inside the `with Workflow(...)` "
                    "block, or add it with wf.add(...)."
                )
        for link in t.links:
            if not 0 <= link < first_id:
                raise DefinitionError(
                    f"task {t.name!r} refers to the output of task #{link}, which is not part "
                    "of this run"
                )
    for i, t in enumerate(tasks):
        t.id = first_id + i
    if backward:  # else every task depends on older ones only: the keys order them, no cycle
        _check_cycles(tasks)
    first_function = functions.count
    new_functions: list[tuple[str, bytes]] = []
    records = []
    for t in tasks:
        fidx = -1
        if t.fn is not None:
            fidx = functions.lookup(t.fn)
            if fidx < 0:
                payload = pickle_function(t.fn, t.name)
                fidx = functions.register(t.fn)
                new_functions.append((_qualname(t.fn), payload))
        deps: tuple[int, ...] = tuple(
            d.id if d.key in members and d.id is not None else known[d.key] for d in t.deps
        )
        if t.links:
            deps = deps + tuple(x for x in t.links if x not in deps)
        records.append(
            Record(
                id=t.id,  # type: ignore[arg-type]
                name=t.name,
                kind=t.kind,
                options=t.options,
                deps=deps,
                payload=pickle_args(t),
                has_refs=t.has_refs,
                function=fidx,
                template=t.template,
                workdir=t.workdir,
                env=t.env or None,
            )
        )
    return Plan(name, records, new_functions, first_function)


def _check_cycles(tasks: list[Task]) -> None:
    indeg = {t.key: 0 for t in tasks}
    children: dict[int, list[Task]] = {t.key: [] for t in tasks}
    for t in tasks:
        for d in t.deps:
            if d.key in indeg:
                indeg[t.key] += 1
                children[d.key].append(t)
    todo = [t for t in tasks if indeg[t.key] == 0]
    seen = 0
    while todo:
        t = todo.pop()
        seen += 1
        for c in children[t.key]:
            indeg[c.key] -= 1
            if indeg[c.key] == 0:
                todo.append(c)
    if seen == len(tasks):
        return
    # Walk dependencies among the leftovers until a task repeats: that is a cycle.
    left = {t.key: t for t in tasks if indeg[t.key] > 0}
    start = next(iter(left.values()))
    path: list[Task] = []
    index: dict[int, int] = {}
    node = start
    while node.key not in index:
        index[node.key] = len(path)
        path.append(node)
        node = next(d for d in node.deps if d.key in left)
    cycle = path[index[node.key] :]
    cycle.reverse()  # show it in execution order: a -> b means b depends on a
    names = " -> ".join(f"{c.name} (#{c.id})" for c in [*cycle, cycle[0]])
    raise DefinitionError(
        f"the workflow has a dependency cycle: {names}. Remove one of these dependencies."
    )


def _qualname(fn: Callable[..., Any]) -> str:
    mod = getattr(fn, "__module__", None) or "?"
    return f"{mod}:{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


def _importable(module: types.ModuleType) -> bool:
    name = module.__name__.split(".", 1)[0]
    if name in sys.builtin_module_names:
        return True
    try:
        return importlib.machinery.PathFinder.find_spec(name, sys.path) is not None
    except (ImportError, ValueError):
        return False


def pickle_function(fn: Callable[..., Any], name: str) -> bytes:
    """Pickle a task function: by reference when workers can import it, else by value."""
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    if mod is not None and mod.__name__ != "__main__" and not _importable(mod):
        # Loaded from a path the workers will not search: send the code itself.
        cloudpickle.register_pickle_by_value(mod)
    try:
        out: bytes = cloudpickle.dumps(fn, protocol=5)
        return out
    except Exception as err:
        raise DefinitionError(
            f"task {name!r}: its function {_qualname(fn)} cannot be serialized for the workers "
            f"({type(err).__name__}: {err}). A task function must not hold locks, open files, "
            "sockets or similar; create such objects inside the function."
        ) from None


def dumps(value: Any) -> bytes:
    """Pickle plain data fast, and anything else (lambdas, local classes) with cloudpickle.

    Plain pickle stores classes by name; one defined in the user's script (``__main__``) would
    not be found in a worker, so such data goes through cloudpickle, which sends the class.
    """
    try:
        data = pickle.dumps(value, protocol=5)
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    out: bytes = cloudpickle.dumps(value, protocol=5)
    return out


def pickle_args(t: Task) -> bytes:
    try:
        return dumps((t.args, t.kwargs))
    except DefinitionError:
        raise
    except Exception as err:
        where = _bad_argument(t)
        raise DefinitionError(
            f"task {t.name!r}: {where} cannot be serialized ({type(err).__name__}: {err}). "
            "Pass plain data (numbers, strings, lists, dicts, arrays) or picklable objects."
        ) from None


def _bad_argument(t: Task) -> str:
    items: list[tuple[str, Any]] = [(f"argument {i + 1}", a) for i, a in enumerate(t.args)]
    items += [(f"argument {k!r}", v) for k, v in t.kwargs.items()]
    for label, value in items:
        try:
            dumps(value)
        except Exception:
            return label
    return "an argument"
