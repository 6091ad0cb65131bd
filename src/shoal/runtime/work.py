"""The run's records, and the work added to it while it goes on.

:class:`Work` owns the run's task records (ids 0..n-1, in order), what each task needs from
the core (``TaskInfo``: request, lane, retry policy), and the changes to the graph that happen
at run time: tasks added (a Response, a rule, ``shoal submit``), a Response's detours and
replacements (``alias``, ``gate_of``), and the options a retry changes. Every change goes into
the batch the driver commits next, before any of it is dispatched.
"""

from __future__ import annotations

import dataclasses
import logging
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from shoal.backends.base import Backend, pooled
from shoal.core.resources import Pool
from shoal.core.stimuli import Shape, Stimulus, StopRequested, Succeeded, TaskInfo
from shoal.errors import DefinitionError, ResourceError
from shoal.spec.kinds import Lane
from shoal.spec.lower import Functions, Plan, Record, lower
from shoal.spec.options import Options, Request
from shoal.spec.response import decode
from shoal.spec.retry import Backoff
from shoal.spec.task import Task, detached
from shoal.store.writer import Batch


def check_resources(records: list[Record], pool: Pool) -> None:
    """Refuse tasks that no node can ever hold, naming the first such task (one check per
    distinct request): for a new run, for work added to a live one, and for retries."""
    seen: set[Request] = set()
    for r in records:
        req = r.options.request
        if req in seen:
            continue
        seen.add(req)
        why = pool.refusal(req)
        if why:
            raise ResourceError(
                f"task {r.name!r} (#{r.id}) can never start: {why}. Lower its request, or, "
                "to test on a small machine, pretend a bigger node: "
                "wf.run(cpus=..., gpus=..., memory=...)."
            )


def isolated(r: Record) -> bool:
    """Runs in a fresh process of its own (``isolate``, or by default a GPU task)."""
    o = r.kind_of.options
    return bool(o.isolate) if o.isolate is not None else o.gpus > 0


def on_workers(r: Record, commands: bool) -> bool:
    """Runs in a persistent worker (and so may be queued behind another task there)."""
    k = r.kind_of
    return pooled(k.kind, isolated(r), k.options.ranks, commands)


def workers_wanted(plan: Plan, backend: Backend) -> tuple[int, int, bool]:
    """Workers worth starting now, the most common task width among their tasks, and whether
    any of those tasks are Python tasks (not only commands)."""
    many = backend.pooled_commands
    pool = [r for r in plan.records if on_workers(r, many)]
    widths = Counter(r.options.cpus for r in pool)
    if not widths:
        return 0, 1, False
    cpus = widths.most_common(1)[0][0]
    cores = sum(len(n.cores) for n in backend.nodes())
    python = any(r.kind != "command" for r in pool)
    return min(widths[cpus], cores // cpus), cpus, python


class HandleIds(Mapping[int, int]):
    """Task handle key -> the task's id in a run (shared by :class:`Work` and the user's
    ``Run``). A workflow's tasks are made in order and numbered in order, so keys and ids count
    up together: runs of them are kept as (first key, first id, length), a few entries for a
    million tasks instead of ~42 bytes each in a dict; a pair that breaks the run goes into a
    dict."""

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self._keys: list[int] = []  # first key of each run, ascending
        self._runs: list[tuple[int, int]] = []  # (first id, length) of each run
        self._other: dict[int, int] = {}
        for key, tid in pairs:
            self[key] = tid

    def __setitem__(self, key: int, tid: int) -> None:
        if self.get(key) == tid:
            return
        if self._keys and key not in self._other:
            first, (start, n) = self._keys[-1], self._runs[-1]
            if key == first + n and tid == start + n:
                self._runs[-1] = (start, n + 1)
                return
            if key > first + n:
                self._keys.append(key)
                self._runs.append((tid, 1))
                return
        elif not self._keys:
            self._keys.append(key)
            self._runs.append((tid, 1))
            return
        self._other[key] = tid  # out of order, or a new id for a key: it wins over a run

    def __getitem__(self, key: int) -> int:
        tid = self._other.get(key)
        if tid is not None:
            return tid
        at = bisect_right(self._keys, key) - 1
        if at >= 0:
            start, n = self._runs[at]
            if key - self._keys[at] < n:
                return start + key - self._keys[at]
        raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        for first, (_, n) in zip(self._keys, self._runs, strict=True):
            for key in range(first, first + n):
                if key not in self._other:
                    yield key
        yield from self._other

    def __len__(self) -> int:
        inside = sum(1 for key in self._other if self._in_run(key))
        return sum(n for _, n in self._runs) - inside + len(self._other)

    def _in_run(self, key: int) -> bool:
        at = bisect_right(self._keys, key) - 1
        return at >= 0 and key - self._keys[at] < self._runs[at][1]


class Work:
    """The run's records and everything that changes them while it runs."""

    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        log: logging.Logger,
        *,
        ids: HandleIds | None = None,
        functions: Functions | None = None,
        default_retry: Backoff | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend  # only to define the functions of added work
        self.log = log
        self.records: list[Record] = plan.records  # ids are 0..n-1, in order
        self.ids = ids if ids is not None else HandleIds()  # shared with the Run
        if functions is None:
            functions = Functions()
            functions.count = len(plan.functions)
        self.functions = functions
        self.default_retry = default_retry  # the run's policy for tasks without their own
        self.pool = Pool(tuple(backend.nodes()))  # for refusing added work with a clear message
        self.lanes = backend.prefetch > 0  # whether tasks get a lane (the backend can queue)
        # Outputs that some task's arguments refer to (kept in memory by runtime/outputs.py).
        self.needed = {d for r in plan.records if r.has_refs for d in r.deps}
        self.alias: dict[int, int] = {}  # task -> the task that replaced it (Response)
        self.gate_of: dict[int, tuple[int, ...]] = {}  # task -> its Response's gate tasks
        self.shapes: dict[tuple[int, str], tuple[Options, Shape, Shape | None]] = {}
        self.batch = Batch()  # the driver's batch for the next commit (it swaps it in)
        self.stimuli: list[Stimulus] = []  # found while turning a Response into work
        self.on_added: list[Callable[[list[Record]], None]] = []  # told of every added record

    # -- what the core sees of a task ---------------------------------------------------------
    def info(self, r: Record) -> TaskInfo:
        o = r.options
        # One Shape per distinct Options and kind (a million tasks share a few), and one more
        # for the tasks of them that may follow.
        key = (id(o), r.kind)
        hit = self.shapes.get(key)
        if hit is None or hit[0] is not o:
            lane = self.lane(r) if self.lanes else None
            retry = o.retry if o.retry is not None else self.default_retry
            alone = Shape(
                o.request, o.priority, o.timeout, lane, retry, o.estimate or 0.0, False, o.tolerate
            )
            hit = self.shapes[key] = (o, alone, None)
        # A Python task in the workers may follow the task it waits for (its output is then
        # resolved in the worker that ran that task); a command's line is rendered here.
        # A task that tolerates failures does not follow: it may start after one.
        follow = (
            hit[1].lane is Lane.WORKERS and r.kind == "python" and bool(r.deps) and not o.tolerate
        )
        if not follow:
            return TaskInfo.of(r.id, r.deps, hit[1])
        shape = hit[2]
        if shape is None:  # made when first needed: tasks with options of their own seldom do
            shape = dataclasses.replace(hit[1], follow=True)
            self.shapes[key] = (o, hit[1], shape)
        return TaskInfo.of(r.id, r.deps, shape)

    def lane(self, r: Record) -> Lane:
        """Which backend queue runs the task: persistent workers, or child processes."""
        return Lane.WORKERS if on_workers(r, self.backend.pooled_commands) else Lane.PROCESS

    def task_id(self, task: Task) -> int | None:
        return self.ids.get(task.key)

    # -- work added while the run goes on -------------------------------------------------------
    def add(self, tasks: list[Task], origin: str) -> list[TaskInfo]:
        """Validate and lower tasks added to the live run; they are stored with the next
        commit, before any of them is dispatched. Raises DefinitionError (nothing changed)."""
        with detached():
            plan = lower(tasks, self.plan.name, len(self.records), self.ids, self.functions)
        if self.alias or self.gate_of:
            for r in plan.records:
                r.deps = self._through(r.deps)
        check_resources(plan.records, self.pool)
        for t in tasks:
            if t.id is not None:
                self.ids[t.key] = t.id
        for i, (_, payload) in enumerate(plan.functions):
            self.backend.define(plan.first_function + i, payload)
        self.records.extend(plan.records)
        for r in plan.records:
            if r.has_refs:
                self.needed.update(r.deps)
        self.batch.plans.append((plan, origin))
        for tell in self.on_added:
            tell(plan.records)
        self.log.info("%s added %d task(s)", origin, len(plan.records))
        return [self.info(r) for r in plan.records]

    def _through(self, deps: tuple[int, ...]) -> tuple[int, ...]:
        """Dependencies of new work, plus what stands behind them: the replacements of a
        replaced task (its output is theirs) and the detours its dependents wait for."""
        out = list(deps)
        todo = list(deps)
        while todo:
            d = todo.pop()
            more = [*self.gate_of.get(d, ()), *((self.alias[d],) if d in self.alias else ())]
            for m in more:
                if m not in out:
                    out.append(m)
                    todo.append(m)
        return tuple(out)

    def retry_info(self, task: int, changes: dict[str, Any]) -> TaskInfo | None:
        """The task's new TaskInfo when a retry changes its options (None: unchanged)."""
        if not changes:
            return None
        r = self.records[task]
        options = r.options.merged(f"retry of task {r.name!r} (#{task})", **changes)
        check_resources([r.with_options(options)], self.pool)
        r.options = options
        self.batch.options.append((task, options))
        return self.info(r)

    def escalated(self, task: int, info: TaskInfo) -> None:
        """Store what a retry policy escalated (timeout, memory), so that a resume keeps it."""
        r = self.records[task]
        o = r.options
        if info.timeout != o.timeout or info.request.memory != o.memory:
            r.options = dataclasses.replace(o, timeout=info.timeout, memory=info.request.memory)
            self.batch.options.append((task, r.options))

    # -- a Response -------------------------------------------------------------------------
    def respond(self, task: int, attempt: int, result: bytes, now: float) -> tuple[Any, Stimulus]:
        """Turn a task's Response (``result``: its pickled output and Response) into the work
        it asks for: the output as the task returned it (pickled) and the ``Succeeded`` that
        carries the work. Raises what an invalid Response raised (the caller fails the task)."""
        r = self.records[task]
        output, resp = decode(result)
        new = list({t.key: t for t in (*resp.add, *resp.detour, *resp.replace)}.values())
        infos = self.add(new, f"response of {r.name} (#{r.id})") if new else []
        by_key = {t.key: t.id for t in new if t.id is not None}  # lower() gave every one an id
        gate = tuple(by_key[t.key] for t in (*resp.detour, *resp.replace))
        if gate:
            first = min(i.id for i in infos)  # tasks from here on came with this Response
            self.gate_of[task] = gate
            self.batch.gates.append((task, gate, first))
        if resp.replace:
            mine = {by_key[t.key] for t in resp.replace}
            self._replace(task, by_key[resp.replace[-1].key], mine, infos)
        if resp.stop_run:
            why = f"task {r.name} (#{r.id}) stopped the run"
            self.stimuli.append(StopRequested(now, True, why))
        event = Succeeded(
            now, task, attempt, add=tuple(infos), gate=gate, skip=resp.stop_children, response=True
        )
        return output, event

    def _replace(self, task: int, standin: int, mine: set[int], infos: list[TaskInfo]) -> None:
        """``standin`` replaces ``task``: added and detour tasks that use the task's output get
        the replacement's, so they wait for it (the replacement itself may use the output as
        it is now)."""
        self.alias[task] = standin
        self.batch.aliases.append((task, standin))
        if task in self.needed:
            self.needed.add(standin)
        for i, info in enumerate(infos):
            added = self.records[info.id]
            if info.id not in mine and task in added.deps:
                added.deps = (*added.deps, standin)
                infos[i] = self.info(added)
                self.needed.add(standin)

    def invalid_response(self, task: int, err: BaseException) -> str:
        """Why a task's Response could not be used (the task then fails)."""
        why = err if isinstance(err, DefinitionError) else f"{type(err).__name__}: {err}"
        r = self.records[task]
        msg = f"the task returned an invalid Response: {why}"
        self.log.warning("task %s (%s): %s", r.id, r.name, msg)
        return msg
