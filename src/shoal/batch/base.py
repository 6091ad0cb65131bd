"""What every batch system shares: a job's state, what a batch job asks for, and the interface
each batch system implements.

Everything here builds text and argument lists, or parses what the batch system printed: no
command runs in this package except through a :class:`Runner`, so each batch system is tested
on recorded output, and the same code drives a local batch system or one reached over SSH.
"""

from __future__ import annotations

import enum
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shoal.errors import DefinitionError


class JobState(enum.StrEnum):
    """A batch job's state, in the words every batch system maps to."""

    PENDING = "pending"  # queued, held, or waiting for a dependency
    RUNNING = "running"
    DONE = "done"  # ended with exit code 0
    FAILED = "failed"  # ended otherwise: an error, a node failure, out of memory
    TIMEOUT = "timeout"  # reached its time limit
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # the batch system no longer knows it (and keeps no accounting)

    @property
    def ended(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.TIMEOUT, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    """What a batch system says of one job."""

    id: str
    state: JobState
    reason: str = ""  # why it pends, or how it ended, in the batch system's words
    exit_code: int | None = None


@dataclass(frozen=True)
class Request:
    """A batch job to submit: its resources, limits and where it writes."""

    name: str
    nodes: int = 1
    time_limit: int = 3600  # seconds
    cores_per_node: int | None = None  # PBS and SGE need it; Slurm takes whole nodes
    account: str | None = None
    queue: str | None = None  # Slurm's partition, PBS's and SGE's queue
    output: str = "shoal-batch.out"  # the batch job's own stdout and stderr (a path)
    workdir: str = "."
    after: str | None = None  # start after this job ended, however it ended (a chain)
    options: tuple[str, ...] = ()  # more directives, as the batch system writes them
    environment: tuple[str, ...] = ()  # lines run before the command (modules, venvs)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", self.name):
            raise DefinitionError(
                f"batch job name {self.name!r}: use letters, digits and _.+- (at most 64)"
            )
        if self.nodes < 1 or self.time_limit < 1:
            raise DefinitionError("a batch job needs at least one node and one second")
        for option in self.options:
            if "\n" in option:
                raise DefinitionError(f"batch option {option!r} holds a newline")


def stop_margin(limit: int) -> float:
    """Minutes before an allocation of ``limit`` seconds ends at which its driver stops
    starting tasks (``--time-left``): 5 % of the limit, at least 30 s, at most 10 minutes."""
    return min(10.0, max(0.5, 0.05 * limit / 60))


def clock(seconds: int) -> str:
    """Seconds as HH:MM:SS (hours may exceed 24), which every batch system accepts."""
    h, rest = divmod(int(seconds), 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def seconds(limit: str) -> int:
    """A time limit as users write it for batch systems, in seconds: MM, MM:SS, HH:MM:SS,
    D-HH, D-HH:MM, D-HH:MM:SS."""
    m = _TIME.match(limit.strip())
    if not m:
        raise DefinitionError(f"time limit {limit!r}: write 30 (minutes), 2:00:00 or 1-12:00:00")
    days, a, b, c = m.groups()
    if days is not None:
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if b is None:
        return int(a) * 60
    if c is None:
        return int(a) * 60 + int(b)
    return int(a) * 3600 + int(b) * 60 + int(c)


@dataclass(frozen=True)
class Output:
    """What a command printed, and how it ended."""

    code: int
    stdout: str
    stderr: str = ""


class Runner(Protocol):
    """Runs a command (locally, or on a host over SSH): argv, never a shell line."""

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> Output: ...


@dataclass
class BatchSystem(ABC):
    """One batch system: the script's directives, and the commands to submit, ask about and
    cancel jobs, with parsers for what they print."""

    name: str = field(init=False, default="")
    directive: str = field(init=False, default="")  # the prefix of a directive line
    job_variable: str = field(init=False, default="")  # holds the job's id inside the job

    def script(self, req: Request, command: Sequence[str]) -> str:
        """The batch script: directives, the environment lines, then ``command``."""
        lines = ["#!/bin/bash", *(f"{self.directive} {d}" for d in self.directives(req))]
        lines += [f"{self.directive} {o}" for o in req.options]
        lines += ["", "set -e", f"cd {shlex.quote(req.workdir)}", *req.environment]
        # when the allocation ends, for the driver's --time-left: the limit asked for, which
        # is never later than the batch system's end (Slurm rounds a limit up to minutes)
        lines.append(f"export SHOAL_END_TIME=$(( $(date +%s) + {int(req.time_limit)} ))")
        lines += ["exec " + shlex.join(command), ""]
        return "\n".join(lines)

    def optional(self, req: Request, queue: str, account: str, after: str) -> list[str]:
        """The directives of what a request may leave out (queue, account, the job to wait
        for), each written by its format (``"-q {}"``)."""
        given = ((queue, req.queue), (account, req.account), (after, req.after))
        return [form.format(value) for form, value in given if value]

    @abstractmethod
    def directives(self, req: Request) -> list[str]:
        """The directive lines (without their prefix) a request asks for."""

    @abstractmethod
    def submit(self, script: str, after: str | None = None) -> list[str]:
        """The command that submits the batch script at path ``script`` (to start after job
        ``after`` ended, however it ended)."""

    @abstractmethod
    def submitted(self, out: Output) -> str:
        """The job id a submission printed (or a BatchError saying why it was refused)."""

    def limit_hit(self, out: Output) -> bool:
        """Whether a refused submission hit a site's limit on jobs (or a busy controller),
        so that it should be tried again later rather than reported as a failure."""
        return False

    def ask(self, run: Runner, ids: Sequence[str]) -> dict[str, Job]:
        """What the batch system says of jobs ``ids``: its status commands in turn, each
        only while some job is still unknown."""
        outputs: list[Output] = []
        jobs: dict[str, Job] = {}
        for argv in self.status(ids):
            outputs.append(run(argv))
            jobs = self.parse_status(outputs, ids)
            if all(j.state is not JobState.UNKNOWN for j in jobs.values()):
                break
        return jobs

    @abstractmethod
    def status(self, ids: Sequence[str]) -> list[list[str]]:
        """The commands that ask about jobs ``ids`` (the first, then fallbacks for ended
        jobs, each only when the one before did not know a job)."""

    @abstractmethod
    def parse_status(self, outputs: Sequence[Output], ids: Sequence[str]) -> dict[str, Job]:
        """Each job of ``ids`` as the status commands' outputs say (UNKNOWN when none
        knows it)."""

    @abstractmethod
    def cancel(self, ids: Sequence[str]) -> list[str]:
        """The command that cancels jobs ``ids``."""
