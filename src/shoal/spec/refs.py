"""References to task outputs, and the walk that finds and replaces them inside arguments.

``task.out`` is a :class:`Ref`; ``ref["energy"]``, ``ref.structure`` and ``ref[0]`` select
parts, chained freely. A live Ref points at its task handle; when arguments are stored it is
pickled as a :class:`StoredRef` that names the task by its run-local id, so stored arguments
are plain data that any process (a resumed driver, a CLI) can read back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from shoal.errors import DefinitionError

Step = tuple[str, Any]  # ("item", key) or ("attr", name)


class Handle:
    """The base of the task handle, :class:`shoal.spec.task.Task`: what a :class:`Ref` points
    at, and what a walk over arguments takes as the task's output (``task.out``).

    Declared here, with the little a reference needs of it, so that this module needs nothing
    of :mod:`shoal.spec.task` (which builds on it).
    """

    __slots__ = ()

    id: int | None  # run-local id, set when a run takes the task

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def out(self) -> Ref:
        raise NotImplementedError


class Ref:
    """A reference to (part of) a task's output. Build it with ``task.out``."""

    __slots__ = ("path", "task")

    def __init__(self, task: Handle, path: tuple[Step, ...] = ()) -> None:
        self.task = task
        self.path = path

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self.task, (*self.path, ("item", key)))

    def __getattr__(self, name: str) -> Ref:
        if name.startswith("_"):
            raise AttributeError(name)
        return Ref(self.task, (*self.path, ("attr", name)))

    def __repr__(self) -> str:
        return f"<Ref {self.task.label}{describe(self.path)}>"

    def __bool__(self) -> bool:
        raise DefinitionError(
            f"{self!r} is a reference to a future result; it has no truth value yet. "
            "Branch on results inside a task, or in a rule."
        )

    def __iter__(self) -> Any:
        raise DefinitionError(
            f"{self!r} is a reference to a future result and cannot be iterated; "
            "select items with ref[0], ref['key'] instead"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self.task.id is None:
            raise DefinitionError(f"{self!r} refers to a task that is not part of this run")
        return (StoredRef, (self.task.id, self.path))


class StoredRef:
    """A reference as stored: the task's run-local id and the path into its output."""

    __slots__ = ("path", "task")

    def __init__(self, task: int, path: tuple[Step, ...] = ()) -> None:
        self.task = task
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoredRef, (self.task, self.path))

    def __repr__(self) -> str:
        return f"<StoredRef task {self.task}{describe(self.path)}>"


def describe(path: tuple[Step, ...]) -> str:
    return "".join(f"[{k!r}]" if kind == "item" else f".{k}" for kind, k in path)


def follow(value: Any, path: tuple[Step, ...], where: str) -> Any:
    """Apply ``path`` to a resolved value, with an error that names the failing step."""
    for i, (kind, key) in enumerate(path):
        try:
            value = value[key] if kind == "item" else getattr(value, key)
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise DefinitionError(
                f"{where}: cannot select {describe(path[: i + 1])} from the output "
                f"({type(value).__name__}): {type(err).__name__}: {err}"
            ) from None
    return value


def walk(obj: Any, visit: Callable[[Any], Any]) -> Any:
    """Rebuild ``obj`` with every Ref/StoredRef/Task replaced by ``visit(it)``.

    Containers walked: list, tuple (named too), dict, set, frozenset and dataclass instances.
    Objects with no reference inside are returned as they are (no copy).
    """
    if isinstance(obj, (Ref, StoredRef, Handle)):
        return visit(obj)
    t = type(obj)
    if t in _ATOMS:
        return obj
    if t is list or t is tuple or t is set or t is frozenset:
        items = [walk(x, visit) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return t(items)
    if t is dict:
        new = {k: walk(v, visit) for k, v in obj.items()}
        if all(new[k] is v for k, v in obj.items()):
            return obj
        return new
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        items = [walk(x, visit) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return t(*items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            w = walk(v, visit)
            if w is not v:
                changes[f.name] = w
        if not changes:
            return obj
        copy = object.__new__(t)
        if hasattr(obj, "__dict__"):
            copy.__dict__.update(obj.__dict__)
        for f in dataclasses.fields(obj):
            object.__setattr__(copy, f.name, changes.get(f.name, getattr(obj, f.name)))
        return copy
    return obj


_ATOMS = frozenset({int, float, str, bytes, bool, complex, type(None)})


def plain(values: Iterable[Any]) -> bool:
    """True when every one of ``values`` is a number, string or None (no reference can hide)."""
    return _ATOMS.issuperset(map(type, values))


def refs_in(obj: Any) -> list[Ref | StoredRef]:
    """Every reference inside ``obj`` (a task handle counts as ``task.out``).

    A search only (nothing is rebuilt), with a fast path for the common case of plain data.
    """
    found: list[Ref | StoredRef] = []
    _find(obj, found)
    return found


def _find(obj: Any, found: list[Ref | StoredRef]) -> None:
    t = type(obj)
    if t in _ATOMS:
        return
    if t is Ref or t is StoredRef:
        found.append(obj)
    elif t is tuple or t is list or t is set or t is frozenset:
        for x in obj:
            if type(x) not in _ATOMS:
                _find(x, found)
    elif t is dict:
        for v in obj.values():
            if type(v) not in _ATOMS:
                _find(v, found)
    elif isinstance(obj, (Ref, Handle, tuple)):  # subclasses, named tuples
        if isinstance(obj, Ref):
            found.append(obj)
        elif isinstance(obj, Handle):
            found.append(obj.out)
        else:
            for x in obj:
                _find(x, found)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _find(getattr(obj, f.name), found)
