"""The data of a random workflow case (``T``, ``Resp``, ``Rule``, ``Req``, ``Case``) and the code
its tasks run (``act`` for Python tasks, ``template`` for commands).

This module is imported by shoal's workers (``act`` is pickled by reference), so it imports
nothing heavy at the top: shoal only inside the functions that need it.

A task's behaviour is a list of *acts*, one per execution (the last one repeats): ``ok``,
``sleep:S``, ``raise:Name``, ``exit:C``, ``kill`` (SIGKILL itself), ``hang`` (sleep far beyond
its timeout) and ``latch`` (wait for a file that the test, or a rule, creates). Executions are
counted by the task itself, in ``<dir>/<name>.n`` (one line per execution), not by
``shoal.current().attempt``: attempt numbers legitimately skip when a queued task comes back
unstarted, and the count file also tells the checker how often each task really ran.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field, fields
from typing import Any

HANG = 10.0  # seconds a hanging task sleeps: far beyond any timeout it is given
LATCH_WAIT = 60.0  # a latch that never opens fails the task after this long


@dataclass
class Resp:
    """The Response a Python task returns when it succeeds."""

    replace: T | None = None
    detour: list[T] = field(default_factory=list)
    add: list[T] = field(default_factory=list)
    stop_children: bool = False
    stop_run: bool = False


@dataclass
class T:
    """One task. ``deps`` are data inputs in order (``"^"``: the output of the task whose
    Response added this one); ``after`` orders only."""

    name: str
    kind: str = "py"  # py | cmd | iso (isolate=True) | mpi (ranks=2)
    deps: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    acts: list[str] = field(default_factory=lambda: ["ok"])
    retries: int = 0
    retry_on: list[str | int] = field(default_factory=list)
    timeout: float | None = None
    escalate: float | None = None  # timeout factor per retry
    cpus: int = 1
    priority: int = 0
    tags: list[str] = field(default_factory=list)
    resp: Resp | None = None
    tolerate: bool = False  # it runs when a dependency failed, reading None for its output

    def nested(self) -> list[T]:
        """The tasks its Response may add (and theirs), not itself."""
        out: list[T] = []
        if self.resp is not None:
            r = self.resp
            for x in [*([r.replace] if r.replace else []), *r.detour, *r.add]:
                out.append(x)
                out.extend(x.nested())
        return out


@dataclass
class Rule:
    """A rule of the workflow: ``retry`` (task-failed of ``on``: retry it once), ``submit``
    (task-succeeded of ``on``: submit ``task`` with its result as input), ``cancel``
    (task-started of ``on``, a latch task: cancel the tag ``cancel-<target>``, then open the
    latch once ``target`` is cancelled), ``stop`` (task-started of ``on``: ctl.stop())."""

    kind: str
    on: str
    target: str | None = None
    task: T | None = None


@dataclass
class Req:
    """A request from outside while the run goes on, made while latch task ``gate`` runs:
    ``cancel`` / ``retry`` / ``rerun`` task ``target``; then the test opens the latch."""

    kind: str
    gate: str
    target: str


@dataclass
class Case:
    seed: int
    tasks: list[T]
    cpus: int = 4
    rules: list[Rule] = field(default_factory=list)
    chain: list[T] = field(default_factory=list)  # submitted one by one by a Strategy
    requests: list[Req] = field(default_factory=list)
    crash: bool = False  # SIGKILL the driver mid-run and resume
    resume_stop: bool = False  # a stopped run is resumed and must then finish the rest

    def all_tasks(self) -> list[T]:
        out: list[T] = []
        for t in [*self.tasks, *self.chain, *(r.task for r in self.rules if r.task)]:
            out.append(t)
            out.extend(t.nested())
        return out


# -- (de)serialisation: JSON for subprocesses and workers, Python for regression tests ----------
def to_json(obj: Any) -> Any:
    if isinstance(obj, T | Resp | Rule | Req | Case):
        return {f.name: to_json(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list):
        return [to_json(x) for x in obj]
    return obj


def t_of(d: dict[str, Any]) -> T:
    d = dict(d)
    if d.get("resp") is not None:
        r = dict(d["resp"])
        r["replace"] = t_of(r["replace"]) if r.get("replace") else None
        r["detour"] = [t_of(x) for x in r.get("detour", [])]
        r["add"] = [t_of(x) for x in r.get("add", [])]
        d["resp"] = Resp(**r)
    return T(**d)


def case_of(d: dict[str, Any]) -> Case:
    d = dict(d)
    d["tasks"] = [t_of(x) for x in d["tasks"]]
    d["chain"] = [t_of(x) for x in d.get("chain", [])]
    d["rules"] = [
        Rule(**{**r, "task": t_of(r["task"]) if r.get("task") else None})
        for r in d.get("rules", [])
    ]
    d["requests"] = [Req(**r) for r in d.get("requests", [])]
    return Case(**d)


def code(obj: Any, indent: int = 0) -> str:
    """Python source that builds ``obj``, leaving out fields at their defaults."""
    pad = " " * indent
    if isinstance(obj, T | Resp | Rule | Req | Case):
        parts = []
        for f in fields(obj):
            v = getattr(obj, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            if f.name in ("name", "seed", "tasks") or v != default:
                parts.append((f.name, v))
        items = [f"{k}={code(v, indent + 4)}" for k, v in parts]
        one = f"{type(obj).__name__}({', '.join(items)})"
        if len(one) + indent <= 96:
            return one
        inner = ",\n".join(" " * (indent + 4) + i for i in items)
        return f"{type(obj).__name__}(\n{inner},\n{pad})"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        one = "[" + ", ".join(code(x, indent + 4) for x in obj) + "]"
        if len(one) + indent <= 96:
            return one
        inner = ",\n".join(" " * (indent + 4) + code(x, indent + 4) for x in obj)
        return f"[\n{inner},\n{pad}]"
    return repr(obj)


# -- what tasks compute -------------------------------------------------------------------------
def value(name: str, inputs: list[Any]) -> int:
    """A Python task's result: a checksum of its name and inputs (so a wrong input shows)."""
    h = zlib.crc32(name.encode())
    for x in inputs:
        h = zlib.crc32(repr(x).encode(), h)
    return h % 1_000_000


def stdout_of(name: str, inputs: list[Any]) -> str:
    """A command's stdout: ``echo NAME INPUT...``."""
    return " ".join([name, *(str(x) for x in inputs)]) + "\n"


def count_path(folder: str, name: str) -> str:
    return os.path.join(folder, name + ".n")


def latch_path(folder: str, name: str) -> str:
    return os.path.join(folder, name + ".open")


def _count(folder: str, name: str) -> int:
    """Record one more execution of ``name``; how many there were, this one included."""
    with open(count_path(folder, name), "a+") as fh:
        fh.write("x\n")
        fh.flush()
        fh.seek(0)
        return fh.read().count("\n")


def _perform(a: str, folder: str, name: str) -> None:
    import signal
    import time

    head, _, arg = a.partition(":")
    if head in ("ok", "count"):
        return
    if head == "sleep":
        time.sleep(float(arg))
    elif head == "hang":
        time.sleep(HANG)
    elif head == "raise":
        import builtins

        raise getattr(builtins, arg)(f"{name} raised on purpose")
    elif head == "exit":
        os._exit(int(arg))
    elif head == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(HANG)
    elif head == "latch":
        path = latch_path(folder, name)
        deadline = time.monotonic() + LATCH_WAIT
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"latch {path} never opened")
            time.sleep(0.005)
    else:
        raise ValueError(f"unknown act {a!r}")


def act(ctx: str, *inputs: Any) -> Any:
    """The body of every Python task of a case: ``ctx`` is JSON ``{"t": T, "dir": folder}``."""
    c = json.loads(ctx)
    t = t_of(c["t"])
    folder = c["dir"]
    rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or "0"
    n = _count(folder, t.name) if rank == "0" else 1  # multi-rank tasks act "ok" only
    a = t.acts[min(n, len(t.acts)) - 1]
    _perform(a, folder, t.name)
    v = value(t.name, [*inputs, n] if a == "count" else list(inputs))
    if t.resp is None:
        return v
    import shoal

    r = t.resp
    refs: dict[str, Any] = {}

    def make(x: T) -> Any:
        task = build(x, refs, folder)
        refs[x.name] = task
        return task

    return shoal.Response(
        v,
        add=[make(x) for x in r.add],
        detour=[make(x) for x in r.detour],
        replace=make(r.replace) if r.replace else None,
        stop_children=r.stop_children,
        stop_run=r.stop_run,
    )


_SH = {
    "ok": 'echo "$@"',
    "hang": f"sleep {HANG:g}",
    "kill": "kill -9 $$",
}


def _sh(a: str) -> str:
    head, _, arg = a.partition(":")
    if head in _SH:
        return _SH[head]
    if head == "sleep":
        return f'sleep {arg}; echo "$@"'
    if head == "exit":
        return f"exit {int(arg)}"
    raise ValueError(f"act {a!r} is not for commands")


def script(t: T, folder: str) -> str:
    """The shell script of a command task (``$@``: its name and inputs): it counts its
    execution, then does its act."""
    if any(ch in folder for ch in "'{} \n\"\\$"):
        raise ValueError(f"the case folder {folder!r} must not need quoting")
    n = count_path(folder, t.name)
    # a command run in its own task folder (workdir=shoal.TASK_DIR) checks it is there, and
    # fails with code 97 if not: the model expects no such failure
    here = '[ "$(pwd -P)" = "$(cd "$SHOAL_TASK_DIR" && pwd -P)" ] || exit 97; '
    if len(t.acts) == 1:
        body = _sh(t.acts[0])
    else:
        arms = [f"{i + 1}) {_sh(a)};;" for i, a in enumerate(t.acts[:-1])]
        body = f"case $n in {' '.join(arms)} *) {_sh(t.acts[-1])};; esac"
    return f"{here if in_task_dir(t) else ''}echo >> {n}; n=$(wc -l < {n}); {body}"


def in_task_dir(t: T) -> bool:
    """Whether a command task runs in its own task folder (by its name: half of them)."""
    return t.kind == "cmd" and (zlib.crc32(t.name.encode()) >> 1) % 2 == 1


def template(t: T, folder: str, nargs: int) -> str:
    """The command line of a command task, in one of two forms (by its name, so that both
    are used): the script itself, with shell syntax, which shoal runs through ``/bin/sh -c``;
    or ``sh FILE NAME ARGS``, a plain command line that shoal spawns directly."""
    args = " ".join(f"{{a{i}}}" for i in range(nargs))
    if zlib.crc32(t.name.encode()) % 2:
        return f"set -- {t.name} {args}; {script(t, folder)}"
    path = os.path.join(folder, t.name + ".sh")
    with open(path, "w") as fh:
        fh.write(script(t, folder) + "\n")
    return f"sh {path} {t.name} {args}".rstrip()


def build(t: T, refs: dict[str, Any], folder: str, given: list[Any] | None = None) -> Any:
    """The shoal task of ``t``; ``refs`` maps names to the tasks made so far; ``given``:
    plain inputs instead of its ``deps`` (tasks a rule or the strategy submits)."""
    from tests.e2e import flowmodel

    import shoal

    def ref(d: str) -> Any:
        if d == "^":
            return shoal.current().out
        dep = refs[d]
        return dep["stdout"] if dep.kind == "command" else dep.out

    inputs = list(given) if given is not None else [ref(d) for d in t.deps]
    opts: dict[str, Any] = {"name": t.name, "cpus": t.cpus}
    if t.priority:
        opts["priority"] = t.priority
    if t.tags:
        opts["tags"] = list(t.tags)
    if t.tolerate:
        opts["tolerate"] = True
    if t.timeout is not None:
        opts["timeout"] = t.timeout
    if t.retries:
        opts["retries"] = t.retries
        opts["retry_on"] = list(t.retry_on)
        if t.escalate:
            opts["escalate"] = {"timeout": t.escalate}
    after = [refs[a] for a in t.after]
    if t.kind == "cmd":
        workdir = shoal.TASK_DIR if in_task_dir(t) else None
        cmd = shoal.command(template(t, folder, len(inputs)), workdir=workdir, **opts)
        return cmd(after=after, **{f"a{i}": x for i, x in enumerate(inputs)})
    if t.kind == "iso":
        opts["isolate"] = True
    if t.kind == "mpi":
        opts["ranks"] = 2
    ctx = json.dumps({"t": to_json(t), "dir": folder})
    task = shoal.task(flowmodel.act).options(**opts)(ctx, *inputs)
    if after:
        task.after(*after)
    return task
