"""Tasks: decorated Python functions and command templates, and the handles their calls return.

Calling a task factory runs nothing. It records a :class:`Task` in the innermost open
:class:`~shoal.spec.workflow.Workflow` (if any) and returns the handle, whose ``out`` is a
reference that later calls may take as an argument: that is how the graph is wired.
"""

from __future__ import annotations

import functools
import itertools
import os
import shlex
import string
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from shoal.errors import DefinitionError
from shoal.spec.options import Options
from shoal.spec.refs import Handle, Ref, StoredRef, plain, refs_in
from shoal.spec.shell import DQ, SQ, analyse

P = ParamSpec("P")
R = TypeVar("R")

_keys = itertools.count()
_EMPTY: dict[str, Any] = {}  # shared by tasks without kwargs or env; never mutated
_local = threading.local()


def fresh_key() -> int:
    """A new handle key (unique in this process)."""
    return next(_keys)


class Collector(Protocol):
    """What takes the tasks made inside a ``with`` block: a :class:`~shoal.spec.workflow.Workflow`
    (named by its shape, so that this module needs nothing of the workflow module)."""

    def add(self, *items: Any) -> Any: ...

    def adopt(self, item: Any) -> None: ...


def open_workflows() -> list[Collector]:
    """The workflows whose ``with`` block is open in this thread, innermost last."""
    stack: list[Collector] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


class detached:
    """Within this block no workflow is open: tasks made by a rule or a Response handler join
    the run they are submitted to, not a ``with Workflow`` block of the caller."""

    def __enter__(self) -> None:
        self.saved = open_workflows()
        _local.stack = []

    def __exit__(self, *exc: object) -> None:
        _local.stack = self.saved


class Task(Handle):
    """A handle to one recorded call. ``task.out`` (or the handle itself) is its output."""

    __slots__ = (
        "after_tasks",
        "args",
        "deps",
        "env",
        "fn",
        "has_refs",
        "id",
        "key",
        "kind",
        "kwargs",
        "links",
        "options",
        "template",
        "workdir",
    )

    def __init__(
        self,
        kind: str,
        options: Options,
        *,
        fn: Callable[..., Any] | None = None,
        template: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        after: Iterable[Task] = (),
    ) -> None:
        self.key = next(_keys)
        self.id: int | None = None  # run-local id, set when a run takes the task
        self.kind = kind
        self.fn = fn
        self.template = template
        self.args = args
        self.kwargs = kwargs or _EMPTY
        self.options = options
        self.workdir = workdir
        self.env = dict(env) if env else _EMPTY
        # Lists are created on first use: a million tasks without dependencies is common.
        self.after_tasks: list[Task] | tuple[()] = ()
        self.deps: list[Task] | tuple[()] = ()
        # A sweep's tasks hold plain values: skip the search for references.
        plain_call = (not args or plain(args)) and plain(self.kwargs.values())
        if plain_call:
            refs: Sequence[Ref | StoredRef] = ()
        elif not self.kwargs and all(type(a) is Ref for a in args):
            refs = args  # the other common case: outputs passed straight on, fn(t.out)
        else:
            refs = refs_in((args, self.kwargs))
        self.has_refs = bool(refs)  # arguments need resolving before the task runs
        # Ids of tasks already in the run that the arguments refer to as stored references
        # (``shoal.current().out`` inside a task, or a handle pickled into a running task).
        self.links: tuple[int, ...] = ()
        for ref in refs:
            if isinstance(ref, Ref):
                self._depend(cast(Task, ref.task))
            elif ref.task not in self.links:
                self.links = (*self.links, ref.task)
        if after:
            self.after(*after)
        stack = open_workflows()
        if stack:
            stack[-1].adopt(self)

    def _depend(self, other: Task) -> None:
        if not any(other is d for d in self.deps):
            if isinstance(self.deps, tuple):
                self.deps = []
            self.deps.append(other)

    def after(self, *tasks: Task | Ref) -> Task:
        """Run this task only after ``tasks`` succeeded (ordering only, no data)."""
        for item in tasks:
            t = item.task if isinstance(item, Ref) else item
            if not isinstance(t, Task):
                raise DefinitionError(
                    f"{self.label}: after= takes task handles, got {type(t).__name__}"
                )
            if not any(t is a for a in self.after_tasks):
                if isinstance(self.after_tasks, tuple):
                    self.after_tasks = []
                self.after_tasks.append(t)
            self._depend(t)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # A handle inside another task's arguments means its output: store a reference.
        return Ref(self).__reduce__()

    @property
    def out(self) -> Ref:
        """A reference to this task's return value (commands: a dict with the exit code)."""
        return Ref(self)

    def __getitem__(self, key: Any) -> Ref:
        return Ref(self)[key]

    @property
    def name(self) -> str:
        if self.options.name:
            return self.options.name
        if self.fn is not None:
            return getattr(self.fn, "__name__", "task")
        assert self.template is not None
        return self.template.split()[0].rsplit("/", 1)[-1] if self.template.split() else "command"

    @property
    def label(self) -> str:
        return f"task {self.name!r}" + (f" (#{self.id})" if self.id is not None else "")

    def __repr__(self) -> str:
        return f"<Task {self.name} key={self.key} id={self.id}>"


class TaskFactory(Generic[P, R]):
    """What ``@shoal.task`` returns: calling it records a task and returns its handle."""

    def __init__(self, fn: Callable[P, R], options: Options) -> None:
        if not callable(fn):
            raise DefinitionError(f"shoal.task needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.defaults = options
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", "task")
        self.__doc__ = getattr(fn, "__doc__", None)

    def options(self, **changes: Any) -> TaskFactory[P, R]:
        """A copy of this factory with other options, e.g. ``relax.options(cpus=4)(...)``."""
        return TaskFactory(self.fn, self.defaults.merged(f"{self.__name__}.options", **changes))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        return Task("python", self.defaults, fn=self.fn, args=args, kwargs=dict(kwargs))

    def __repr__(self) -> str:
        return f"<shoal task factory {self.__name__}>"


@overload
def task(fn: Callable[P, R], **options: Any) -> TaskFactory[P, R]: ...
@overload
def task(fn: None = None, **options: Any) -> Callable[[Callable[P, R]], TaskFactory[P, R]]: ...
def task(fn: Any = None, **options: Any) -> Any:
    """Turn a function into a task factory: ``@task``, ``@task(cpus=4)`` or ``task(fn)``.

    Options: ``name``, ``cpus`` (cores per rank), ``gpus`` (per rank), ``ranks``, ``memory``
    (MB per rank, or a string like ``"4GB"``), ``timeout`` (seconds), ``priority`` (higher
    starts first), ``tags``, ``isolate`` (run in a fresh process instead of a worker) and
    ``tolerate`` (run even when a task it depends on failed; that output reads as None).
    """
    where = f"task({getattr(fn, '__name__', '')})" if fn is not None else "task(...)"
    opts = Options().merged(where, **options)
    if fn is None:
        return lambda f: TaskFactory(f, opts)
    return TaskFactory(fn, opts)


def placeholders(template: str) -> set[str]:
    """The names used by ``{placeholders}`` in a command template."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise DefinitionError(f"command template {template!r} is malformed: {err}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split(".", 1)[0].split("[", 1)[0]
        if not base or base.isdigit():
            raise DefinitionError(
                f"command template {template!r} uses a positional placeholder {{{field}}}; "
                "name it, e.g. {T}, and pass T=... when calling"
            )
        names.add(base)
    return names


def _check_env(where: str, env: Mapping[str, Any] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise DefinitionError(f"{where}: env must be a dict of strings, got {type(env).__name__}")
    bad = [k for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        k = bad[0]
        raise DefinitionError(
            f"{where}: env[{k!r}] = {env[k]!r} is not a string; environment values must be "
            f"strings, e.g. env={{{k!r}: {str(env[k])!r}}}"
        )
    return dict(env)


TASK_DIR = "{task_dir}"
"""A command's ``workdir`` that stands for its own task folder (``tasks/<id>`` of the run),
created before the command starts: ``shoal.command("lmp -in in.lj", workdir=shoal.TASK_DIR)``.
It may start a longer path (``TASK_DIR + "/scratch"``)."""


def _check_workdir(where: str, workdir: Any) -> str | None:
    if workdir is None:
        return None
    if not isinstance(workdir, str | os.PathLike):
        raise DefinitionError(f"{where}: workdir must be a path, got {workdir!r}")
    text = os.fspath(workdir)
    if TASK_DIR in text and not text.startswith(TASK_DIR):
        raise DefinitionError(
            f"{where}: workdir {text!r} has {TASK_DIR} inside it; it stands for the task's "
            f"folder and may only start the path, e.g. {TASK_DIR + '/scratch'!r}"
        )
    return text


class CommandFactory:
    """What ``shoal.command`` returns: calling it with the placeholder values records a task."""

    def __init__(
        self,
        template: str,
        options: Options,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(template, str) or not template.strip():
            raise DefinitionError("shoal.command needs a non-empty command template string")
        self.template = template
        self.defaults = options
        where = f"command {template!r}"
        self.workdir = _check_workdir(where, workdir)
        self.env = _check_env(where, env)
        self.fields = placeholders(template)
        check_command(template)

    def options(self, **changes: Any) -> CommandFactory:
        workdir = changes.pop("workdir", self.workdir)
        env = changes.pop("env", self.env)
        opts = self.defaults.merged(f"command {self.template!r}", **changes)
        return CommandFactory(self.template, opts, workdir, env)

    def __call__(
        self,
        *args: Any,
        after: Iterable[Task] = (),
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        **values: Any,
    ) -> Task:
        where = f"command {self.template!r}"
        if args:
            raise DefinitionError(f"{where}: pass placeholder values by name, e.g. T=300")
        missing = sorted(self.fields - set(values))
        if missing:
            need = ", ".join(f"{m}=..." for m in missing)
            raise DefinitionError(f"{where} needs a value for {missing}: call it with {need}")
        extra = sorted(set(values) - self.fields)
        if extra:
            raise DefinitionError(
                f"{where} has no placeholder for {extra}; its placeholders are "
                f"{sorted(self.fields) or 'none'}"
            )
        merged_env = {**self.env, **_check_env(where, env)}
        workdir = _check_workdir(where, workdir)
        return Task(
            "command",
            self.defaults,
            template=self.template,
            kwargs=values,
            workdir=workdir if workdir is not None else self.workdir,
            env=merged_env,
            after=after,
        )

    def __repr__(self) -> str:
        return f"<shoal command {self.template!r}>"


def command(
    template: str,
    *,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> CommandFactory:
    """A factory of command tasks: ``md = command("lmp -in in.melt -var T {T}", cpus=4)``.

    Each call fills the ``{placeholders}`` (values may be references to other tasks' outputs);
    ``after=[...]`` adds ordering-only dependencies. The task's output is a dict:
    ``returncode`` (0), ``stdout`` (the text it printed, up to 1 MiB) and ``dir`` (its task
    folder, which holds the full ``stdout`` and ``stderr`` files). Without ``workdir`` a
    command runs in the directory the run was started from; ``workdir=shoal.TASK_DIR`` runs
    it in its own task folder (for programs that write files where they run).
    """
    opts = Options().merged(f"command {template!r}", **options)
    return CommandFactory(template, opts, workdir, env)


_SHELL_CHARS = set("|&;<>()$`\\*?~\n")


def _quote(text: str, state: str, shell: bool) -> str:
    """Quote an inserted value so it stays one word and literal, wherever it sits."""
    if state == DQ:  # inside the user's double quotes: escape what is special there
        special = '\\"$`' if shell else '\\"'  # sh also expands $ and `; shlex.split does not
        return "".join("\\" + c if c in special else c for c in text)
    if state == SQ:  # inside single quotes: close, insert an escaped quote, reopen
        return text.replace("'", "'\\''")
    return shlex.quote(text)


def check_command(template: str) -> None:
    """Refuse a template with a placeholder where no quoting keeps its value from becoming
    code (a here-document's body, the string of ``sh -c``, ``eval``...): see
    :mod:`shoal.spec.shell`. The message says where, why, and how to write it instead."""
    try:
        _parsed(template)
    except DefinitionError:
        raise
    except ValueError as err:
        raise DefinitionError(f"command template {template!r} is malformed: {err}") from None


def render_command(template: str, values: dict[str, Any]) -> tuple[list[str], bool]:
    """Fill a template: ``(argv, False)``, or ``([line], True)`` when it needs a shell.

    Each inserted value stays one argument and is taken literally: it is quoted for where it
    sits (bare, or inside the template's own double or single quotes). Templates with shell
    syntax (pipes, redirections, ``;``, ``$VAR``...) run through ``/bin/sh -c``. Templates
    that put a value where it would be read as code are refused (:func:`check_command`).
    """
    pieces, shell, fixed = _parsed(template)
    if fixed is not None:  # no placeholder: the same argv every time
        return list(fixed), shell
    fmt = _FORMATTER
    parts: list[str] = []
    for literal, field, spec, conv, state in pieces:
        parts.append(literal)
        if field is None:
            continue
        value, _ = fmt.get_field(field, (), values)
        value = fmt.convert_field(value, conv)
        parts.append(_quote(fmt.format_field(value, spec or ""), state, shell))
    line = "".join(parts)
    return ([line], True) if shell else (shlex.split(line), False)


_FORMATTER = string.Formatter()
Piece = tuple[str, str | None, str | None, str | None, str]


@functools.lru_cache(maxsize=256)
def _parsed(template: str) -> tuple[tuple[Piece, ...], bool, tuple[str, ...] | None]:
    """A template's literal parts and fields, each field with the quoting context it sits in;
    whether it needs a shell; and its argv when it has no field at all. Raises
    :class:`DefinitionError` for a field that cannot be quoted safely."""
    raw = list(_FORMATTER.parse(template))
    shell = any(_SHELL_CHARS & set(p[0]) for p in raw)
    contexts, problems = analyse([(p[0], p[1]) for p in raw], shell)
    if problems:
        raise DefinitionError(problems[0].message(template))
    pieces = []
    fields = iter(contexts)
    for literal, field, spec, conv in raw:
        pieces.append((literal, field, spec, conv, next(fields) if field is not None else ""))
    fixed = None
    if all(p[1] is None for p in pieces):
        line = "".join(p[0] for p in pieces)
        fixed = (line,) if shell else tuple(shlex.split(line))
    return tuple(pieces), shell, fixed
