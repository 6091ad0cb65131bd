"""The generator of random cases: ``generate(seed, mix)``, the same case for the same seed.

A case is a DAG of 40-120 tasks, mostly tiny Python tasks (so that tasks queue behind short
ones on a worker: the prefetch fast path) with commands, isolated tasks and (where
``mpiexec`` exists) two-rank tasks between them, each with a behaviour per execution, retry
policies, timeouts, resource shapes, priorities and tags; Responses of every form; rules; a
strategy; a stop barrier; outside requests. ``Mix`` says which of these a case may use.

Everything is built so that the outcome is decided by the case, not by timing: timeouts are
either far below what a task sleeps (0.4-1 s against 10 s) or far above (20 s); a stop comes
only where nothing but its own ancestors and descendants exist (a barrier); a cancel acts on
a task held back by a latch, which opens only once the cancel has been made.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace

from .flowmodel import Case, Req, Resp, Rule, T

EXCS = ["ValueError", "KeyError", "RuntimeError"]
RETRY_ON: list[str | int] = ["error", "exit", "crash", "timeout", "ValueError", "KeyError", 3]
TIMEOUTS = [0.8, 1.0, 1.2]  # a timeout may strike before a task starts: not too tight
KILLS = 3  # at most this many SIGKILLs of the driver in a crash case


@dataclass(frozen=True)
class Mix:
    """What a case may use."""

    low: int = 40
    high: int = 120
    cmd: bool = True
    iso: bool = True
    mpi: bool = False
    python_kills: bool = True  # os._exit, SIGKILL and hangs in Python tasks
    responses: bool = True
    rules: bool = True
    strategy: bool = True
    stop: bool = True
    requests: bool = False
    crash: bool = False
    tolerate: bool = True  # tasks that run when a dependency failed (Options.tolerate)


def default_mix(mode: str) -> Mix:
    """The mixes the tests and the soak use, by name. They draw two-rank tasks whether or
    not ``mpiexec`` is here (``generate`` makes them one-rank Python tasks where it is
    not), so that a seed names the same case on every machine."""
    mpi = True
    if mode == "basic":
        return Mix(mpi=mpi)
    if mode == "requests":
        return Mix(low=30, high=70, mpi=mpi, stop=False, requests=True)
    if mode == "crash":
        return Mix(low=60, high=120, mpi=mpi, stop=False, crash=True)
    if mode == "dask":  # Python tasks run in the Dask workers' threads: nothing that ends them
        return Mix(low=30, high=70, iso=False, python_kills=False, stop=False)
    if mode == "slurm":
        return Mix(low=20, high=40, python_kills=False, stop=False)
    raise ValueError(f"unknown mode {mode!r}: basic, requests, crash, dask, slurm")


class Gen:
    def __init__(self, seed: int, mix: Mix) -> None:
        self.rng = random.Random(seed)
        self.mix = mix
        self.seed = seed
        # Targets of requests and of cancel rules never come to wait for a hook: a retry or
        # rerun request waits for its target to fail or succeed, and a hook may be cancelled
        # (seed 30007); a cancel finds its target ended if a hook failed (seed 30112).
        self.targets: set[str] = set()
        # A stream of its own for what came later (tolerate), so that a seed keeps naming
        # the case it named before.
        self.later = random.Random(seed * 7919 + 1)
        self.kinds: dict[str, str] = {}

    # -- single tasks --------------------------------------------------------------------------
    def kind(self, python_only: bool = False) -> str:
        r = self.rng.random()
        if python_only:
            return "iso" if self.mix.iso and r < 0.15 else "py"
        if self.mix.cmd and r < 0.15:
            return "cmd"
        if self.mix.iso and r < 0.22:
            return "iso"
        if self.mix.mpi and r < 0.25:
            return "mpi"
        return "py"

    def failure(self, kind: str) -> tuple[str, float | None]:
        """One failing act, and the timeout it needs (hangs only)."""
        choices = ["exit", "kill", "hang"]
        if kind != "cmd":
            choices.append("raise")
            if not self.mix.python_kills:
                choices = ["raise"]
        c = self.rng.choice(choices)
        if c == "raise":
            return f"raise:{self.rng.choice(EXCS)}", None
        if c == "exit":
            return f"exit:{self.rng.choice([3, 4])}", None
        if c == "kill":
            return "kill", None
        return "hang", self.rng.choice(TIMEOUTS)

    def behaviour(self, t: T) -> None:
        """Acts, timeout and retry policy of ``t``."""
        rng = self.rng
        if t.kind == "mpi":
            return
        r = rng.random()
        if r < 0.55:
            if rng.random() < 0.1:
                t.timeout = 20.0
            return
        if r < 0.63:
            t.acts = [f"sleep:{rng.uniform(0.02, 0.3):.2f}"]
            if rng.random() < 0.3:
                t.timeout = 20.0
            return
        if r < 0.96:
            fail, timeout = self.failure(t.kind)
            t.timeout = timeout
            if r < 0.8:
                t.acts = [fail]
            else:  # flaky: fails, then succeeds
                more = [fail] if rng.random() < 0.25 else []
                t.acts = [fail, *more, "ok"]
            if rng.random() < 0.6 or self.mix.crash:
                t.retries = rng.choice([1, 1, 2])
                if rng.random() < 0.5 and not self.mix.crash:
                    t.retry_on = rng.sample(RETRY_ON, rng.choice([1, 2]))
            if self.mix.crash and len(t.acts) > 1:
                # An attempt lost with the driver uses up a retry, even one killed before it
                # began (and so did not use up an act): room for every kill of the case.
                t.retries = len(t.acts) - 1 + KILLS
            return
        if self.mix.crash:
            return  # a lost attempt is not escalated: "slow, then a longer timeout" is not sure
        if t.kind == "py" and not self.mix.python_kills:
            return  # a timeout of a Python task in a thread ends its worker process
        # slow, then fixed by a longer timeout: 1.5 s against 0.4 s, then 10 s
        t.acts = ["sleep:1.5"]
        t.timeout = 0.4
        t.escalate = 25.0
        t.retries = 1
        t.retry_on = rng.choice([[], ["timeout"]])

    def options(self, t: T, cpus: int) -> None:
        rng = self.rng
        if rng.random() < 0.12 and cpus >= 2 and t.kind != "mpi":
            t.cpus = 2
        t.priority = rng.choice([0, 0, 0, 0, 0, 0, 1, -1, 5])
        t.tags = sorted(rng.sample(["a", "b", "c"], rng.choice([0, 0, 1, 2])))

    def deps(self, earlier: list[str]) -> tuple[list[str], list[str]]:
        rng = self.rng
        if not earlier:
            return [], []
        k = rng.choices([0, 1, 2, 3], [35, 35, 20, 10])[0]
        picked: list[str] = []
        for _ in range(k):
            pool = earlier[-8:] if rng.random() < 0.7 else earlier
            d = rng.choice(pool)
            if d not in picked:
                picked.append(d)
        after = [d for d in picked if rng.random() < 0.2]
        return [d for d in picked if d not in after], after

    def task(self, name: str, earlier: list[str], cpus: int, depth: int = 0) -> T:
        t = T(name, self.kind())
        t.deps, t.after = self.deps(earlier)
        self.behaviour(t)
        self.options(t, cpus)
        self.kinds[name] = t.kind
        python = ("py", "iso")
        if (
            self.mix.tolerate
            and t.kind in python
            and t.deps
            and all(self.kinds.get(d) in python for d in t.deps)
            and self.later.random() < 0.15
        ):
            t.tolerate = True
        if (
            self.mix.responses
            and t.kind in ("py", "iso")
            and depth < 2
            and self.rng.random() < 0.12
        ):
            t.resp = self.response(t.name, cpus, depth)
        return t

    def sub(self, name: str, cpus: int, depth: int, python_only: bool, up: bool) -> T:
        """A task a Response adds."""
        t = T(name, self.kind(python_only))
        if up:
            t.deps = ["^"]
        if self.rng.random() < 0.3:
            self.behaviour(t)
        self.options(t, cpus)
        if t.kind in ("py", "iso") and depth < 2 and self.rng.random() < 0.25:
            t.resp = self.response(name, cpus, depth + 1, chain_only=python_only)
        return t

    def response(self, name: str, cpus: int, depth: int, chain_only: bool = False) -> Resp:
        rng = self.rng
        form = "replace" if chain_only else rng.choice(["replace", "detour", "add", "skip", "mix"])
        r = Resp()
        if form in ("replace", "mix") and (form == "replace" or rng.random() < 0.5):
            r.replace = self.sub(f"{name}.r", cpus, depth, True, False)
        if form in ("detour", "mix") and r.replace is None:
            r.detour = [
                self.sub(f"{name}.d{i}", cpus, depth, False, rng.random() < 0.5)
                for i in range(rng.choice([1, 2]))
            ]
        if form in ("add", "skip", "mix"):
            up = r.replace is None
            r.add = [
                self.sub(f"{name}.a{i}", cpus, depth, False, up and rng.random() < 0.5)
                for i in range(rng.choice([0, 1, 2] if form != "add" else [1, 2]))
            ]
        r.stop_children = form == "skip"
        return r

    # -- whole cases ---------------------------------------------------------------------------
    def case(self) -> Case:
        rng = self.rng
        mix = self.mix
        cpus = rng.choice([2, 3, 4])
        n = rng.randint(mix.low, mix.high)
        tasks: list[T] = []
        names: list[str] = []
        for i in range(n):
            t = self.task(f"t{i}", names, cpus)
            tasks.append(t)
            names.append(t.name)
        case = Case(self.seed, tasks, cpus=cpus, crash=mix.crash)
        if mix.stop and rng.random() < 0.15:
            self.barrier(case)
            return case
        if mix.rules and rng.random() < 0.35:
            for _ in range(rng.choice([1, 2, 3])):
                self.rule(case)
        if mix.strategy and rng.random() < 0.2:
            case.chain = [
                self.sub(f"s{i}", cpus, 2, False, False) for i in range(rng.choice([2, 3, 4]))
            ]
        if mix.requests:
            for i in range(rng.choice([1, 1, 2])):
                self.request(case, i)
        return case

    def insert(self, case: Case, new: list[T], hook: T) -> int:
        """Put ``new`` (in order) at a random place; later tasks may come to depend on
        ``hook``."""
        at = self.rng.randint(0, len(case.tasks))
        case.tasks[at:at] = new
        for t in case.tasks[at + len(new) : at + len(new) + 12]:
            # A latch gate never waits for another hook: cancelling that one would end the
            # gate too, and what waits for the gate would never be made (seed 20094); nor does
            # a request's target. (The draw comes first, so that a seed makes the same case as
            # before these rules.)
            draw = self.rng.random()
            free = "latch" not in t.acts and t.name not in self.targets
            if draw < 0.3 and hook.name not in t.deps + t.after and free:
                t.deps.append(hook.name)
        return at

    def rule(self, case: Case) -> None:
        rng = self.rng
        kind = rng.choice(["retry", "submit", "cancel"])
        i = len(case.rules)
        if kind == "cancel":
            gate = T(f"cg{i}", acts=["latch"], cpus=2)
            # not a follower of the gate (another shape), so that it cannot start on the
            # worker before the driver has made the cancel
            target = T(
                f"cy{i}", rng.choice(["py", "cmd"]), deps=[gate.name], tags=[f"cancel-cy{i}"]
            )
            self.insert(case, [gate, target], target)
            self.targets.add(target.name)
            case.rules.append(Rule("cancel", gate.name, target.name))
            return
        plain = [t for t in case.tasks if t.resp is None and t.kind != "mpi"]
        if not plain:
            return
        t = rng.choice(plain)
        if any(r.on == t.name for r in case.rules):
            return
        if kind == "retry":
            fail, timeout = self.failure(t.kind)
            if timeout is not None:
                fail, timeout = ("exit:3" if t.kind == "cmd" else "raise:ValueError"), None
            t.acts, t.timeout, t.retries, t.retry_on, t.escalate = [fail, "ok"], None, 0, [], None
            case.rules.append(Rule("retry", t.name))
        else:
            new = self.sub(f"{t.name}.s", case.cpus, 2, False, False)
            case.rules.append(Rule("submit", t.name, task=new))

    def request(self, case: Case, i: int) -> None:
        """A latch gate, and a task to cancel, retry or rerun while the gate holds the run
        open. The gate never holds what the test waits for behind it: a task to retry or
        rerun has another lane (isolated, command) than the gate (a Python worker) and a
        core left beside it."""
        rng = self.rng
        kind = rng.choice(["cancel", "retry", "rerun"])
        gate = T(f"qg{i}", acts=["latch"])
        if kind == "cancel":
            # the same shape as the gate or not: it may follow the gate on its worker
            gate.cpus = rng.choice([1, 2])
            target = T(f"qy{i}", rng.choice(["py", "py", "cmd"]), deps=[gate.name])
            target.cpus = rng.choice([1, 2])
            self.insert(case, [gate, target], target)
        elif kind == "retry":
            k = rng.choice(["iso", "cmd"])
            target = T(f"qf{i}", k, acts=["exit:3" if k == "cmd" else "raise:ValueError", "ok"])
            self.insert(case, [target, gate], target)
        else:
            target = T(f"qr{i}", "iso", acts=["count"])  # not waited for by the gate: it runs
            at = self.insert(case, [target, gate], target)
            for t in case.tasks[at + 2 :]:  # what uses it waits for the gate too
                if target.name in t.deps + t.after and gate.name not in t.deps + t.after:
                    t.after.append(gate.name)
        self.targets.add(target.name)
        case.requests.append(Req(kind, gate.name, target.name))

    def barrier(self, case: Case) -> None:
        """A task that stops the run, with nothing beside it: its ancestors are made to
        succeed, and every other task is made to wait for it."""
        rng = self.rng
        tasks = case.tasks
        k = rng.randint(len(tasks) // 4, 3 * len(tasks) // 4)
        earlier = [t.name for t in tasks[:k]]
        by = {t.name: t for t in tasks}
        deps, after = self.deps(earlier)
        ups: set[str] = set()
        stack = deps + after
        while stack:
            x = stack.pop()
            if x not in ups:
                ups.add(x)
                stack.extend(by[x].deps + by[x].after)
        for t in tasks:
            if t.name in ups:  # they must succeed, and add nothing beside the stop
                t.acts = [a for a in t.acts if a.startswith("sleep")] or ["ok"]
                t.retries, t.timeout, t.escalate, t.retry_on = 0, None, None, []
                if t.resp is not None:
                    t.resp = Resp(detour=[_clean(x) for x in t.resp.detour])
        stop = T("stop", rng.choice(["py", "iso"]), deps=deps, after=after)
        if rng.random() < 0.5:
            stop.resp = Resp(stop_run=True)
            if rng.random() < 0.5:
                stop.resp.add = [T("stop.a0")]
            if rng.random() < 0.3:
                stop.resp.detour = [T("stop.d0")]
        else:
            stop.kind = rng.choice(["py", "cmd"])
            case.rules.append(Rule("stop", stop.name))
        rest = []
        for t in tasks:
            if t.name in ups:
                continue
            if all(d in ups for d in t.deps + t.after):
                t.after.append(stop.name)
            rest.append(t)
        case.tasks = [t for t in tasks if t.name in ups] + [stop] + rest
        case.resume_stop = rng.random() < 0.5


def _clean(t: T) -> T:
    return replace(t, acts=["ok"], retries=0, timeout=None, escalate=None, retry_on=[], resp=None)


def generate(seed: int, mix: Mix | str = "basic") -> Case:
    case = Gen(seed, default_mix(mix) if isinstance(mix, str) else mix).case()
    if shutil.which("mpiexec") is None:
        for t in case.all_tasks():
            if t.kind == "mpi":
                t.kind = "py"
    return case
