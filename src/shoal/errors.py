"""The one exception tree of shoal.

Every error says what went wrong, why, and what to do next. The tree:

    ShoalError
    ├── DefinitionError        the workflow itself is wrong (cycle, missing reference, bad option)
    │   ├── ResourceError      a request that no node can ever satisfy
    │   └── RequestRefused     a control request (cancel, retry, rerun, added work) refused as asked
    ├── TaskFailed             user code raised, a command exited non-zero, a timeout, a crash
    │   └── DependencyFailed   a task never ran because a task it needs failed
    ├── TaskSkipped            a task never ran because a Response upstream stopped its children
    ├── StoreError             the run directory cannot be read or written
    ├── RunInterrupted         a result asked of a run stopped early (also SystemExit, code 3)
    └── BackendError           the infrastructure under the run failed
        ├── RemoteError        a remote host cannot be reached, or lacks what a run needs
        └── BatchError         a batch system refused or failed a command (sbatch, qsub, ...)

All of them pickle (they carry only plain strings and numbers), so they cross process borders.
"""

from __future__ import annotations

from collections.abc import Iterable


class ShoalError(Exception):
    """Base class of every error shoal raises on purpose."""


class DefinitionError(ShoalError, ValueError):
    """The workflow cannot run as written: fix the definition and try again."""


class ResourceError(DefinitionError):
    """A task asks for more than any node has; it could never start."""


class RequestRefused(DefinitionError):
    """A control request (cancel, retry, rerun, restore, work a Response adds) cannot be done as
    asked: an unknown task, a task in the wrong state, a cycle. Nothing changed; the message
    says what to ask instead. (A ``DefinitionError``, so code that caught that still does.)"""


class TaskSkipped(ShoalError):
    """A task was skipped (a task upstream returned ``Response(stop_children=True)``); it has
    no result, and that is not a failure."""

    def __init__(self, message: str, *, task: int = -1, name: str = "") -> None:
        super().__init__(message)
        self.task = task
        self.name = name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_skipped, (self.args[0] if self.args else "", self.task, self.name))


def _rebuild_skipped(message: str, task: int, name: str) -> TaskSkipped:
    return TaskSkipped(message, task=task, name=name)


class StoreError(ShoalError):
    """The run directory or its database is missing, locked or unreadable."""


class RunInterrupted(ShoalError, SystemExit):
    """The run was stopped early (Ctrl-C, SIGTERM, its deadline) before the task asked for
    finished; ``shoal resume`` carries it on.

    It is also a :class:`SystemExit` with code 3, so that a script in the usual form
    (``run = wf.run(); print(run.result(t))``) that does not catch it exits with 3, the code of
    a resumable run, under ``python script.py`` as under ``shoal run script.py``. Being an
    ``Exception`` too, ``except Exception`` or ``except shoal.ShoalError`` catch it.
    """

    def __init__(self, message: str, *, task: int = -1, name: str = "", rundir: str = "") -> None:
        super().__init__(message)
        self.code = 3
        self.task = task
        self.name = name
        self.rundir = rundir

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_interrupted,
            (self.args[0] if self.args else "", self.task, self.name, self.rundir),
        )


def _rebuild_interrupted(message: str, task: int, name: str, rundir: str) -> RunInterrupted:
    return RunInterrupted(message, task=task, name=name, rundir=rundir)


class BackendError(ShoalError):
    """The execution backend failed (not the user's code)."""


class RemoteError(BackendError):
    """A remote host cannot be reached, refuses the connection or the login, or lacks what a
    remote run needs (its folder, its batch system, shoal): the message says which, and
    what to do."""


class BatchError(BackendError):
    """A batch system (Slurm, PBS, SGE) refused or failed a command: the message quotes what
    it said and what to change."""


class TaskFailed(ShoalError):
    """A task ended in failure.

    ``traceback`` holds the remote traceback (text) for Python tasks; ``kind`` is one of
    ``error``, ``exit``, ``timeout``, ``crash``, ``lost`` or ``cancelled``.
    """

    def __init__(
        self,
        message: str,
        *,
        task: int = -1,
        name: str = "",
        kind: str = "error",
        traceback: str = "",
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.task = task
        self.name = name
        self.kind = kind
        self.traceback = traceback
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args[0] if self.args else "", self.__dict__))

    def __str__(self) -> str:
        text = super().__str__()
        if self.traceback:
            title = "Remote traceback" if self.kind == "error" else "Details"
            return f"{text}\n\n{title}:\n{self.traceback.rstrip()}"
        return text


class DependencyFailed(TaskFailed):
    """A task was not run because a task upstream of it failed; ``root`` names that task."""

    def __init__(self, message: str, *, root: int = -1, root_name: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.root = root
        self.root_name = root_name


def _rebuild(cls: type[TaskFailed], message: str, state: dict[str, object]) -> TaskFailed:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


def hint(word: object, known: Iterable[object]) -> str:
    """``"; did you mean 'cpus'?"`` for the closest of ``known`` (case aside), else ``""``."""
    choices = [str(k) for k in known]
    lowered = {c.lower(): c for c in choices}
    import difflib  # only on the error path: workers import this module and start fast

    close = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""
