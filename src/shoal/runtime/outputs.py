"""Task outputs as the driver needs them: kept in memory, read back, or standing in.

:class:`OutputCache` keeps the newest outputs that other tasks' arguments use (``KEPT`` bytes of
them, pickled), reads older ones back from the store, follows a Response's replacements to the
task whose output stands for another's, and builds the arguments of a task that uses other
tasks' outputs (small ones travel with the arguments; large ones are resolved here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.backends.execute import Outputs, with_inputs
from shoal.core.states import State
from shoal.errors import DefinitionError
from shoal.runtime.work import Work
from shoal.spec.lower import Record, dumps
from shoal.spec.refs import StoredRef, follow, walk
from shoal.store.pickles import loads

NONE = dumps(None)  # the output of a failed task, for a task that tolerates it (Options)
KEPT = 256 << 20  # bytes of outputs the driver keeps in memory for dependents
CARRY = 1 << 16  # bytes of other tasks' outputs a task's arguments may carry


class OutputCache:
    """The outputs that tasks' arguments use; see the module docstring."""

    def __init__(
        self,
        work: Work,
        stored: Callable[[int], bytes | None],
        state: Callable[[int], State],
    ) -> None:
        self.work = work
        self.stored = stored  # a task's pickled result as the store has it
        self.state = state  # a task's state (the core's)
        self.values: dict[int, bytes] = {}
        self.kept = 0  # bytes in self.values

    def value(self, task: int) -> Any:
        """The result of a task that succeeded (through replacements)."""
        task = self.standin(task)
        if self.state(task) is not State.SUCCEEDED:
            raise DefinitionError(f"task #{task} has no result: it is {self.state(task).value}")
        return loads(self.pickled(task), self.label(task))

    def standin(self, task: int, asking: Record | None = None) -> int:
        """The task whose output stands for ``task``'s: its replacement (Response), through
        chains of them. The tasks of a replacement (``asking``: one whose inputs are being
        prepared) use the replaced task's own output, as it returned it; every other task,
        detours of the same Response included, waits for the replacement and gets its."""
        alias, gate_of = self.work.alias, self.work.gate_of
        while task in alias:
            standin = alias[task]
            if asking is not None and (
                standin == asking.id
                or (asking.id in gate_of.get(task, ()) and standin not in asking.deps)
            ):
                break
            task = standin
        return task

    def keep(self, task: int, data: bytes) -> None:
        """Keep an output that tasks' arguments use, dropping the oldest kept beyond KEPT
        bytes (a million-task DAG must not hold every output in the driver's memory)."""
        old = self.values.pop(task, None)
        if old is not None:
            self.kept -= len(old)
        self.values[task] = data
        self.kept += len(data)
        while self.kept > KEPT and len(self.values) > 1:
            first = next(iter(self.values))
            self.kept -= len(self.values.pop(first))

    def pickled(self, task: int) -> bytes:
        data = self.values.get(task)
        if data is None:
            data = self.stored(task)
            if data is None:
                if self.state(task) is State.FAILED:  # for a task that tolerates it: None
                    return NONE
                raise DefinitionError(f"the result of task #{task} is not in the store")
        return data

    def label(self, task: int) -> str:
        """How errors name a task's output."""
        source = self.work.records[task]
        return f"output of {source.name!r} (#{source.id})"

    # -- the arguments of a task that uses other tasks' outputs -------------------------------
    def resolve(self, r: Record) -> tuple[tuple[Any, ...], dict[str, Any]]:
        cache: dict[int, Any] = {}

        def visit(ref: Any) -> Any:
            assert isinstance(ref, StoredRef)
            task = self.standin(ref.task, r)
            if task not in cache:
                cache[task] = loads(self.pickled(task), self.label(task))
            return follow(cache[task], ref.path, self.label(ref.task))

        args, kwargs = loads(r.payload, f"the arguments of {r.name!r} (#{r.id})")
        return walk(args, visit), walk(kwargs, visit)

    def payload(self, r: Record, local: int | None = None) -> bytes:
        """The arguments of a task that uses other tasks' outputs: when those are small, they
        travel with the arguments and the references are resolved where the task runs (the
        driver does least); large ones are resolved here, so that only the parts selected
        travel. A follower (``local``: the task it follows, whose output does not exist yet)
        gets every other output, whatever its size, and the worker resolves ``local``'s from
        the result it has just made."""
        if local is not None:
            outputs: Outputs = {}
            for d in r.deps:  # a dependency may stand for ``local`` (a Response replaced it)
                standin = self.standin(d, r)
                data = None if standin == local else self.pickled(standin)
                outputs[d] = (self.label(d), data)
            return with_inputs(r.payload, outputs)
        outputs = {}
        size = 0
        for d in r.deps:
            data = self.values.get(self.standin(d, r))
            if data is None:
                break
            size += len(data)
            if size > CARRY:
                break
            outputs[d] = (self.label(d), data)
        else:
            return with_inputs(r.payload, outputs)
        return dumps(self.resolve(r))
