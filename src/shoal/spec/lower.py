"""Lowering: tasks checked and turned into plain records that the store keeps and the runtime
dispatches, with their functions and arguments pickled.

:func:`lower` refuses with a clear message and nothing half-started: references to tasks
outside the work, cycles (the message lists the cycle), functions or arguments that cannot be
serialized. :class:`Functions` remembers the functions a run has seen, so that work added later
reuses their ids.
"""

from __future__ import annotations

import contextvars
import importlib.machinery
import io
import marshal
import pickle
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle

from shoal.errors import DefinitionError
from shoal.spec.options import Options
from shoal.spec.task import Task


@dataclass(frozen=True, slots=True)
class Kind:
    """What the records of one kind of task share (a million tasks have a few kinds)."""

    kind: str
    options: Options
    function: int = -1  # index into Plan.functions
    template: str | None = None
    workdir: str | None = None
    env: dict[str, str] | None = None


_kinds: dict[tuple[Any, ...], Kind] = {}


def _kind(
    kind: str,
    options: Options,
    function: int,
    template: str | None,
    workdir: str | None,
    env: dict[str, str] | None,
) -> Kind:
    """The shared :class:`Kind` of these fields (a bounded cache by value and identity)."""
    key = (kind, id(options), function, template, workdir, id(env) if env else None)
    hit = _kinds.get(key)
    if hit is None or hit.options is not options or (env and hit.env is not env):
        if len(_kinds) >= 4096:
            _kinds.clear()
        hit = _kinds[key] = Kind(kind, options, function, template, workdir, env)
    return hit


class Record:
    """One task as plain data: what the store keeps and the runtime dispatches. What tasks
    of one kind share is in :attr:`kind_of` (read through ``kind``, ``options``,
    ``function``, ``template``, ``workdir``, ``env``): a record costs 80 bytes, not 120."""

    __slots__ = ("deps", "has_refs", "id", "kind_of", "name", "payload")

    def __init__(
        self,
        id: int,
        name: str,
        kind: str,
        options: Options,
        deps: tuple[int, ...],
        payload: bytes,  # pickled (args, kwargs) with references as StoredRef
        has_refs: bool,
        function: int = -1,  # index into Plan.functions
        template: str | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.deps = deps
        self.payload = payload
        self.has_refs = has_refs
        self.kind_of = _kind(kind, options, function, template, workdir, env)

    @property
    def kind(self) -> str:
        return self.kind_of.kind

    @property
    def options(self) -> Options:
        return self.kind_of.options

    @options.setter
    def options(self, options: Options) -> None:  # this record's alone from now on
        self.kind_of = replace(self.kind_of, options=options)

    def with_options(self, options: Options) -> Record:
        """A copy of this record with other options."""
        copy = Record.__new__(Record)
        copy.id, copy.name, copy.deps = self.id, self.name, self.deps
        copy.payload, copy.has_refs = self.payload, self.has_refs
        copy.kind_of = replace(self.kind_of, options=options)
        return copy

    @property
    def function(self) -> int:
        return self.kind_of.function

    @property
    def template(self) -> str | None:
        return self.kind_of.template

    @property
    def workdir(self) -> str | None:
        return self.kind_of.workdir

    @property
    def env(self) -> dict[str, str] | None:
        return self.kind_of.env

    def _fields(self) -> tuple[Any, ...]:
        return (self.id, self.name, self.deps, self.payload, self.has_refs, self.kind_of)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        k = self.kind_of
        return (
            f"Record(id={self.id}, name={self.name!r}, kind={k.kind!r}, deps={self.deps}, "
            f"function={k.function}, options={k.options!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        k = self.kind_of
        return (
            Record,
            (
                self.id,
                self.name,
                k.kind,
                k.options,
                self.deps,
                self.payload,
                self.has_refs,
                k.function,
                k.template,
                k.workdir,
                k.env,
            ),
        )


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


def lower(
    tasks: list[Task],
    name: str,
    first_id: int,
    known: Mapping[int, int],
    functions: Functions,
) -> Plan:
    """Validate ``tasks`` and turn them into records (see
    :func:`shoal.spec.workflow.compile_workflow`)."""
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


def _module_attribute(module: str, attr: str) -> Any:
    """What a pickled module-level object stands for, where it is unpickled."""
    return getattr(importlib.import_module(module), attr)


_WHERE: dict[int, tuple[str, str]] = {}  # id of a module-level object -> (module, name)


def _find_global(obj: Any) -> tuple[str, str] | None:
    """The module and name under which ``obj`` is a module attribute, if it is one."""
    found = _WHERE.get(id(obj))
    if found is not None:
        return found
    for module, mod in list(sys.modules.items()):
        for name, value in list(getattr(mod, "__dict__", {}).items()):
            if value is obj and module != "__main__":
                _WHERE[id(obj)] = (module, name)
                return module, name
    return None


_IMPORTABLE: dict[str, bool] = {}  # module name -> whether workers find it (_importable)


def _undecorated(module: str, qualname: str) -> Any:
    """What a pickled decorated function stands for, where it is unpickled (see Pickler)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj.original


def _decorated_at(fn: types.FunctionType) -> tuple[str, str] | None:
    """(module, qualname) of the decorator wrapper whose ``original`` is ``fn`` (jobflow's
    ``@job``), when workers can import that module; else None."""
    mod = sys.modules.get(fn.__module__ or "")
    if mod is None or mod.__name__ == "__main__" or "<locals>" in fn.__qualname__:
        return None
    by_value = getattr(cloudpickle.cloudpickle, "_is_registered_pickle_by_value", None)
    if by_value is None or by_value(mod):  # sent by value (pickle_function), or unknown
        return None
    importable = _IMPORTABLE.get(mod.__name__)
    if importable is None:
        importable = _IMPORTABLE[mod.__name__] = _importable(mod)
    if not importable:
        return None  # loaded from a path the workers will not search
    obj: Any = mod
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    if getattr(obj, "original", None) is not fn:
        return None
    return mod.__name__, fn.__qualname__


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with two references where it would send values:

    * a module-level ``ContextVar`` (which cannot be pickled) as where it lives: a function
      sent by value, such as a jobflow ``@job`` defined in a script, drags in its module's
      globals, and jobflow's include one;
    * the function under a decorator that keeps it as ``original`` (jobflow's ``@job``: a
      Job holds the undecorated function, which is not the module's attribute), as that
      attribute's ``original``: not its code and globals in every Job's payload.

    And the code of a function sent by value (a script's) goes as it is (``marshal``, the
    workers run the same Python): cloudpickle names its file ``<dynamic-code>``, so that a
    traceback would not say which script and line failed.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is contextvars.ContextVar:
            where = _find_global(obj)
            if where is not None:
                return (_module_attribute, where)
        elif type(obj) is types.FunctionType:
            found = _decorated_at(obj)
            if found is not None:
                return (_undecorated, found)
        elif type(obj) is types.CodeType:  # as it is: cloudpickle drops its file name
            return (marshal.loads, (marshal.dumps(obj),))
        return super().reducer_override(obj)


def cdumps(value: Any) -> bytes:
    """``cloudpickle.dumps`` with :class:`Pickler`."""
    buf = io.BytesIO()
    Pickler(buf, protocol=5).dump(value)
    return buf.getvalue()


def pickle_function(fn: Callable[..., Any], name: str) -> bytes:
    """Pickle a task function: by reference when workers can import it, else by value."""
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    if mod is not None and mod.__name__ != "__main__" and not _importable(mod):
        # Loaded from a path the workers will not search: send the code itself.
        cloudpickle.register_pickle_by_value(mod)
    try:
        return cdumps(fn)
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
        try:  # the references of Pickler without cloudpickle's cost (a jobflow Job)
            buf = io.BytesIO()
            _Referring(buf, protocol=5).dump(value)
            data = buf.getvalue()
            if b"__main__" not in data:
                return data
        except Exception:
            pass
    return cdumps(value)


class _Referring(pickle.Pickler):
    """Plain pickle, and the two references of :class:`Pickler` (a decorated function, a
    module-level ContextVar); anything else that plain pickle refuses goes to cloudpickle."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.FunctionType:
            found = _decorated_at(obj)
            if found is not None:
                return (_undecorated, found)
        elif kind is contextvars.ContextVar:
            where = _find_global(obj)
            if where is not None:
                return (_module_attribute, where)
        return NotImplemented


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
