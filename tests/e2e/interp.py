"""The reference interpreter: what a case must end as, computed serially, without shoal.

It walks the tasks in an order that respects what each waits for and decides each one whole:
it ends as its upstream made it (``dep_failed``, ``cancelled``, ``skipped``), or it runs its
acts one execution after the other under its retry policy, and on success applies its
Response (tasks added; dependents gated by a detour or a replacement; children skipped; the
run stopped). Rules, the strategy chain and outside requests are applied where they act.

Where the real order of events may legitimately decide between two outcomes (a task below
both a failed and a skipped task ends as whichever reached it first) the expected state is a
set of states; anything else is exact. A case whose outcome would hang on timing the
generator must not make (a stop while unrelated tasks could still run) raises :class:`Racy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .flowmodel import Case, T, stdout_of, value

BAD_OF = {"failed": "dep_failed", "dep_failed": "dep_failed", "cancelled": "cancelled"}
BAD_OF["skipped"] = "skipped"
BAD = frozenset(BAD_OF)
# What makes a run fail; a task cancelled on purpose (a rule, a request) does not.
FAILISH = frozenset({"failed", "dep_failed"})
KINDS = {"raise": "error", "exit": "exit", "kill": "crash", "hang": "timeout", "sleep": "timeout"}


class Racy(Exception):
    """The case has no single predictable outcome (a bug of the generator, not of shoal)."""


@dataclass
class Node:
    t: T
    waits: list[str]
    parent: str | None = None  # whose Response added it ("^" inputs are that one's output)
    given: list[Any] | None = None  # inputs handed over by a rule or the strategy
    states: frozenset[str] | None = None
    out: Any = None
    alias: str | None = None
    execs: int = 0
    attempts: int = 0
    skipped_by: set[str] = field(default_factory=set)
    cancelled: bool = False
    retry_once: bool = False  # a rule or a request retries it once after it failed
    rerun: bool = False  # a request runs it again after it succeeded


@dataclass
class Expected:
    states: dict[str, frozenset[str]]
    results: dict[str, Any]  # name -> effective result, for tasks surely succeeded
    execs: dict[str, int]
    run: frozenset[str]
    stopped: dict[str, frozenset[str]] | None = None  # before the resume of a stopped run


def matches(on: list[str | int], kind: str, exc: str | None, code: int | None) -> bool:
    if not on:
        return True
    return kind in on or (code is not None and code in on) or (exc is not None and exc in on)


class Interpreter:
    def __init__(self, case: Case) -> None:
        self.case = case
        self.nodes: dict[str, Node] = {}
        self.stopped = False
        self.rules: dict[tuple[str, str], list[Any]] = {}
        for r in case.rules:
            self.rules.setdefault((r.kind, r.on), []).append(r)
        for q in case.requests:
            self.rules.setdefault(("req-" + q.kind, q.gate), []).append(q)
        self.retried = {q.target for q in case.requests if q.kind == "retry"}
        self.retried |= {r.on for r in case.rules if r.kind == "retry"}
        self.rerun = {q.target for q in case.requests if q.kind == "rerun"}
        self.opened = {q.gate for q in case.requests} | {
            r.on for r in case.rules if r.kind == "cancel"
        }
        for t in case.tasks:
            self.add(t)
        if case.chain:
            self.add(case.chain[0], given=[])

    # -- the graph ---------------------------------------------------------------------------
    def add(self, t: T, parent: str | None = None, given: list[Any] | None = None) -> Node:
        if t.name in self.nodes:
            raise Racy(f"two tasks are named {t.name!r}")
        waits = [d for d in t.deps if d != "^"] + list(t.after)
        if "^" in t.deps and parent is not None:
            waits.append(parent)
        n = self.nodes[t.name] = Node(t, waits, parent, given)
        n.retry_once = t.name in self.retried
        n.rerun = t.name in self.rerun
        return n

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.nodes[name].waits)
        while stack:
            x = stack.pop()
            if x not in seen:
                seen.add(x)
                stack.extend(self.nodes[x].waits)
        return seen

    def descendants(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            x = stack.pop()
            for n in self.nodes.values():
                if x in n.waits and n.t.name not in seen:
                    seen.add(n.t.name)
                    stack.append(n.t.name)
        return seen

    def stop(self, at: str, added: list[str]) -> None:
        """Nothing starts after this: every other task must be finished or wait for ``at``."""
        fine = self.ancestors(at) | self.descendants(at) | {at, *added}
        loose = [n for n in self.nodes if n not in fine]
        if loose:
            raise Racy(f"{at} stops the run while {loose[:5]} may still run")
        self.stopped = True

    # -- deciding ----------------------------------------------------------------------------
    def run(self) -> Expected:
        self._decide_all()
        first: dict[str, frozenset[str]] | None = None
        if self.stopped and self.case.resume_stop:
            first = {k: n.states for k, n in self.nodes.items() if n.states is not None}
            self.stopped = False
            for n in self.nodes.values():
                if n.states in ({"ready"}, {"pending"}):
                    n.states = None
            self._decide_all()
        return self.expected(first)

    def _decide_all(self) -> None:
        while True:
            for n in list(self.nodes.values()):
                if n.states is None and all(self.nodes[w].states is not None for w in n.waits):
                    self.decide(n)
                    break
            else:
                break
        stuck = [k for k, n in self.nodes.items() if n.states is None]
        if stuck:
            raise Racy(f"tasks wait for each other: {stuck[:5]}")

    def decide(self, n: Node) -> None:
        bad: set[str] = set()
        for w in n.waits:
            s = self.nodes[w].states
            assert s is not None
            if n.t.tolerate and "failed" in s:  # it runs all the same, reading None
                if s != {"failed"}:
                    raise Racy(f"{w} may or may not have failed, below tolerant {n.t.name}")
                if w in self.retried:
                    raise Racy(f"{w} is retried after tolerant {n.t.name} may have started")
                continue
            if s & BAD:
                if not s <= BAD:
                    raise Racy(f"{w} may or may not have succeeded")
                bad |= {BAD_OF[x] for x in s}
        if n.skipped_by:
            bad.add("skipped")
        if n.cancelled:
            bad.add("cancelled")
        if bad:
            n.states = frozenset(bad)
        elif self.stopped:
            ok = ({"succeeded"}, {"failed"}) if n.t.tolerate else ({"succeeded"},)
            done = all(self.nodes[w].states in ok for w in n.waits)
            n.states = frozenset({"ready" if done else "pending"})
        else:
            self.start(n)

    def inputs(self, n: Node) -> list[Any]:
        if n.given is not None:
            return list(n.given)
        out = []
        for d in n.t.deps:
            if d == "^":
                assert n.parent is not None
                out.append(self.nodes[n.parent].out)
                continue
            x = self.nodes[d]
            while x.alias is not None:
                x = self.nodes[x.alias]
            if x.states == {"failed"}:  # a tolerant task reads None for it
                out.append(None)
                continue
            out.append(x.out["stdout"] if self.nodes[d].t.kind == "cmd" else x.out)
        return out

    def start(self, n: Node) -> None:
        name = n.t.name
        for _ in self.rules.get(("stop", name), []):
            self.stop(name, [])
        for r in [*self.rules.get(("cancel", name), []), *self.rules.get(("req-cancel", name), [])]:
            target = self.nodes[r.target]
            if target.states is not None or name not in self.ancestors(r.target):
                raise Racy(f"{r.target} is not waiting below {name}")
            target.cancelled = True
        t = n.t
        if "latch" in t.acts and name not in self.opened:
            raise Racy(f"nothing opens the latch of {name}")
        first = n.attempts
        timeout = t.timeout
        while True:
            n.attempts += 1
            n.execs += 1
            a = t.acts[min(n.execs, len(t.acts)) - 1]
            fail = self.fails(a, timeout)
            if fail is None:
                break
            if t.retries and n.attempts - first <= t.retries and matches(t.retry_on, *fail):
                if t.escalate and timeout is not None:
                    timeout *= t.escalate
                if self.stopped:
                    raise Racy(f"{name} would wait out a retry in a stopped run")
                continue
            if n.retry_once:
                n.retry_once = False
                first = n.attempts
                timeout = t.timeout
                continue
            n.states = frozenset({"failed"})
            return
        self.succeed(n)

    def fails(self, a: str, timeout: float | None) -> tuple[str, str | None, int | None] | None:
        head, _, arg = a.partition(":")
        if head in ("ok", "latch", "count"):
            return None
        if head == "sleep":
            return ("timeout", None, None) if timeout is not None and timeout < float(arg) else None
        if head == "hang":
            if timeout is None:
                raise Racy("a hanging task without a timeout")
            return ("timeout", None, None)
        if head == "raise":
            return ("error", arg, None)
        if head == "exit":
            return ("exit", None, int(arg))
        if head == "kill":
            return ("crash", None, -9)
        raise ValueError(a)

    def succeed(self, n: Node) -> None:
        t = n.t
        ins = self.inputs(n)
        if n.rerun:  # a request ran it again, after it succeeded: the newest output counts
            n.execs += 1
            n.attempts += 1
        last = t.acts[min(n.execs, len(t.acts)) - 1]
        if last == "count":
            ins = [*ins, n.execs]
        if t.kind == "cmd":
            n.out = {"returncode": 0, "stdout": stdout_of(t.name, ins)}
        else:
            n.out = value(t.name, ins)
        n.states = frozenset({"succeeded"})
        added: list[str] = []
        if t.resp is not None:
            r = t.resp
            children = [c for c in self.nodes.values() if t.name in c.waits and c.states is None]
            for x in r.add:
                added.append(self.add(x, parent=t.name).t.name)
            gates = [*r.detour, *([r.replace] if r.replace else [])]
            for x in gates:
                added.append(self.add(x, parent=t.name).t.name)
                for c in children:
                    c.waits.append(x.name)
            if r.replace is not None:
                n.alias = r.replace.name
            if r.stop_children:
                for c in children:
                    c.skipped_by.add(t.name)
            if r.stop_run:
                self.stop(t.name, added)
        for r in self.rules.get(("submit", t.name), []):
            self.add(r.task, given=[n.out["stdout"] if t.kind == "cmd" else n.out])
        chain = self.case.chain
        for i, c in enumerate(chain[:-1]):
            if c.name == t.name:
                self.add(chain[i + 1], given=[n.out["stdout"] if t.kind == "cmd" else n.out])

    # -- the answer --------------------------------------------------------------------------
    def effective(self, name: str) -> Any:
        """What ``run.result`` gives: the output through replacements, or ``!state``."""
        x = self.nodes[name]
        while x.states == {"succeeded"} and x.alias is not None:
            x = self.nodes[x.alias]
        if x.states == {"succeeded"}:
            return x.out
        return "!" + "|".join(sorted(x.states or ()))

    def expected(self, first: dict[str, frozenset[str]] | None) -> Expected:
        states = {k: n.states for k, n in self.nodes.items() if n.states is not None}
        results = {k: self.effective(k) for k, s in states.items() if s == {"succeeded"}}
        execs = {k: n.execs for k, n in self.nodes.items()}
        base = "stopped" if self.stopped else "succeeded"
        if any(s <= FAILISH for s in states.values()):
            run = frozenset({"failed"})
        elif any(s & FAILISH for s in states.values()):
            run = frozenset({"failed", base})
        else:
            run = frozenset({base})
        return Expected(states, results, execs, run, first)


def expect(case: Case) -> Expected:
    return Interpreter(case).run()
