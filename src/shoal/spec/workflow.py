"""Workflows collect tasks; :func:`compile_workflow` checks them and lowers them to plain records.

Validation happens before anything runs (:mod:`shoal.spec.lower` does the checking and the
lowering). Requests that no node can satisfy are checked by the run, which knows the nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shoal.errors import DefinitionError
from shoal.spec.lower import Functions, Plan, lower
from shoal.spec.steer import Rule, Strategy, Tracker, make_rule, make_tracker
from shoal.spec.task import Task, open_workflows

if TYPE_CHECKING:
    # named by the one runtime module spec may use (Workflow.run/submit, the allowed late
    # import: tests/test_imports.py)
    from shoal.runtime.api import Run


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
        # ids of the items, to add each once: built on the first add(); a task made inside
        # the ``with`` block is new, so it is appended without one (a set costs ~66 B a task)
        self._keys: set[int] | None = None
        self.own_rules: list[Rule] = []
        self.own_strategies: list[Strategy] = []
        self.own_tracked: dict[str, Tracker] = {}
        if track:
            self.track(**track)
        stack = open_workflows()
        if stack:
            stack[-1].adopt(self)

    def adopt(self, item: Task | Workflow) -> None:
        """Add an item that was just made (so not in this workflow yet)."""
        self.items.append(item)
        if self._keys is not None:
            self._keys.add(id(item))

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
            if self._keys is None:
                self._keys = {id(i) for i in self.items}
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
    # the runtime with a late import of shoal.runtime.api, the one import of spec that points
    # up (allowed by name in tests/test_imports.py and scripts/layout.py).
    def run(self, **options: Any) -> Run:
        """Run to the end and return the :class:`~shoal.runtime.run.Run` (see ``shoal.run``)."""
        from shoal.runtime.api import run

        return run(self, **options)

    def submit(self, **options: Any) -> Run:
        """Start the run in the background and return its handle at once; ``run.wait()``."""
        from shoal.runtime.api import submit

        return submit(self, **options)


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
