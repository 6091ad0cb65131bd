"""The one narrow contract every backend implements, and the job it receives.

A backend is told which nodes exist (``nodes``), given function payloads once (``define``),
handed ready jobs with concrete placements (``submit``), asked to stop attempts (``cancel``),
and polled for outcomes (``poll``). It never decides what runs next: the core does. The same
conformance suite (tests/backends) runs against every implementation.

What the runtime relies on (docs/contract.md has it whole):

* An attempt begins when its task starts executing. A job queued behind another (``after``)
  that never starts is given back with ``Outcome(returned=True)`` and costs no attempt.
* A job's outcome comes after the outcome of the job ahead of it on its slot, never while the
  core has it queued.
* A worker death, a timeout or a kill is charged to exactly the attempt executing at that
  moment; every other attempt the dead worker held is given back.
* Outcomes are reported when they happen; a backend may hold one briefly to share a wake-up
  of the driver, within a stated bound, and never past the start of a task that could be long.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.core.events import Outcome
from shoal.core.resources import Node, Placement


def pooled(kind: str, isolate: bool, ranks: int, commands: bool = False) -> bool:
    """Whether a task runs in a persistent worker: a single-rank Python task not isolated, and
    with ``commands`` (``Backend.pooled_commands``) a single-rank command too. The runtime
    picks a task's prefetch lane with it and the backend routes jobs with it, so the two
    always agree."""
    if ranks != 1:
        return False
    return (kind == "python" and not isolate) or (commands and kind == "command")


@dataclass(slots=True)
class Job:
    """One attempt of one task, ready to run where the placement says."""

    task: int
    attempt: int
    name: str
    kind: str  # "python" or "command"
    placement: Placement
    folder: str  # the task's folder, tasks/<id> (a str: a Path per task costs 9 µs)
    function: int = -1  # python: id of a function given to define()
    # python: pickled (args, kwargs) with references resolved, or with small outputs carried
    # along for the worker to resolve them (execute.INPUTS); execute.arguments reads both
    payload: bytes = b""
    argv: list[str] = field(default_factory=list)  # command: the program and its arguments
    shell: bool = False  # command: argv[0] is a shell line for /bin/sh -c
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    isolate: bool = False  # python: run in a fresh process, not a persistent worker
    ranks: int = 1
    cpus: int = 1  # cores per rank
    after: int | None = None  # queue behind this running task on its slot (prefetch)
    follows: bool = False  # python: start only if ``after`` succeeded there, with its output

    @property
    def taskdir(self) -> Path:
        return Path(self.folder)

    @property
    def pooled(self) -> bool:
        return pooled(self.kind, self.isolate, self.ranks)


def job_command(job: Job, functions: dict[int, bytes], python: str) -> list[str]:
    """The argv of a job run as a process of its own: a command as it is (a shell line through
    ``/bin/sh -c``), a Python task through ``python -m shoal.backends.isolated TASKDIR`` with
    its function and arguments written to ``TASKDIR/input.pkl``."""
    if job.kind == "python":
        import pickle

        job.taskdir.mkdir(parents=True, exist_ok=True)
        with open(job.taskdir / "input.pkl", "wb") as fh:
            pickle.dump((functions[job.function], job.payload), fh, protocol=5)
        return [python, "-m", "shoal.backends.isolated", str(job.taskdir)]
    if job.shell:
        return ["/bin/sh", "-c", job.argv[0]]
    return list(job.argv)


class Backend(abc.ABC):
    """What the runtime needs from an execution engine."""

    name: str = "backend"
    capabilities: frozenset[str] = frozenset()
    # How many tasks may queue behind a running one (jobs with ``after``). A follower is always
    # of the same lane as the task it follows: persistent workers, or a process chain.
    prefetch: int = 0
    # Seconds of expected work queued per slot (the run option prefetch_window overrides it):
    # more for backends whose round trip to a worker is long.
    prefetch_window: float = 0.02
    # Whether single-rank commands run in the persistent workers too (see ``pooled``).
    pooled_commands: bool = False

    @abc.abstractmethod
    def nodes(self) -> list[Node]:
        """The nodes (with core and GPU ids) this backend can place work on."""

    @abc.abstractmethod
    def start(self, rundir: Path) -> None:
        """Get ready to run jobs for the run in ``rundir`` (start workers, connect, ...)."""

    @abc.abstractmethod
    def define(self, function: int, payload: bytes) -> None:
        """Make a pickled function known under ``function`` before jobs use it."""

    @abc.abstractmethod
    def submit(self, jobs: Sequence[Job]) -> None:
        """Start these attempts. Must not block on their completion."""

    @abc.abstractmethod
    def cancel(self, task: int, attempt: int) -> None:
        """Stop an attempt; its outcome (a failure, or ``returned``) is reported by ``poll``."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[Outcome]:
        """Outcomes that arrived, waiting up to ``timeout`` seconds for the first one."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop everything this backend started. Safe to call twice."""

    def boot(self, python: bool = True) -> None:  # noqa: B027 - optional, no-op here
        """Start what is slow to start, before the run is checked and its directory made;
        ``start`` or ``close`` follows (``python``: the run has Python tasks, not only
        commands)."""

    def preload(self, modules: tuple[str, ...]) -> None:  # noqa: B027 - optional, no-op here
        """Import ``modules`` once where workers come from, before the first of them starts
        (called before ``boot``): heavy imports paid once, not in every worker."""

    def warm(  # noqa: B027 - optional, no-op here
        self, workers: int, cpus: int = 1, python: bool = True
    ) -> None:
        """A hint: about this many tasks of ``cpus`` cores will run at once in persistent
        workers (``python``: some of them are Python tasks, not only commands)."""

    def notes(self) -> list[str]:
        """Things the run should tell the user once (e.g. that CPU pinning was folded)."""
        return []
