"""Running one Python call inside a worker or an isolated process (no shoal imports beyond this).

Shared by the persistent worker (``worker.py``) and the fresh-process runner (``isolated.py``),
so a task behaves the same wherever it runs: the function is unpickled once, the arguments per
call; the result is pickled with pickle, or cloudpickle when pickle cannot; failures come back
as text tracebacks (exceptions of user code need not be picklable).
"""

from __future__ import annotations

import _thread
import io
import os
import pickle
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

# A worker imports this module before its first command, so it imports little more than an
# interpreter started with -S has already (see zygote.py): typing, pathlib, contextlib,
# threading and traceback at the top cost 10-15 ms of each run's start.

Reply = tuple[bool, bytes | None, str, str, float, float]  # ok, result, kind, error, start, end
STDOUT_LIMIT = 1 << 20  # a command's output value carries at most this much of its stdout
GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a command (process group) is stopped
# task id -> (how to name it in errors, pickled output); None: the output of the task this one
# follows, made just before in the same worker (``local`` below)
Outputs = dict[int, tuple[str, bytes | None]]

# A payload is pickled ``(args, kwargs)``, or ``(INPUTS, that payload with references as
# StoredRef, outputs)``: the outputs the references need travel with it, and the references
# are resolved here, where the task runs, instead of in the driver (which is the busiest
# process of a run). The driver sends small outputs this way and resolves large ones itself.
INPUTS = "shoal-inputs"


class Current:  # a plain class: a dataclass or NamedTuple would import more at start
    """The task this process is running: its id, attempt and folder (``tasks/<id>``)."""

    __slots__ = ("attempt", "dir", "task")

    def __init__(self, task: int, attempt: int, dir: str) -> None:
        self.task = task
        self.attempt = attempt
        self.dir = dir

    def __repr__(self) -> str:
        return f"Current(task={self.task}, attempt={self.attempt}, dir={self.dir!r})"

    @property
    def out(self) -> Any:
        """A reference to this task's own output, for the tasks of a ``Response`` to use."""
        from shoal.spec.refs import StoredRef

        return StoredRef(self.task)


CURRENT: Current | None = None  # set by the worker before each task
_THREAD = _thread._local()  # set per task where tasks run in threads (Dask workers)


def current() -> Current:
    """The task being run, from inside a task: ``shoal.current().dir`` is its folder.

    In persistent workers shoal sets this before each task; commands and isolated tasks also
    get ``SHOAL_TASK``, ``SHOAL_ATTEMPT`` and ``SHOAL_TASK_DIR`` in their environment.
    """
    here: Current | None = getattr(_THREAD, "current", None)
    if here is not None:
        return here
    if CURRENT is not None:
        return CURRENT
    if "SHOAL_TASK" in os.environ:
        env = os.environ
        return Current(int(env["SHOAL_TASK"]), int(env["SHOAL_ATTEMPT"]), env["SHOAL_TASK_DIR"])
    raise RuntimeError("shoal.current() is only meaningful inside a running shoal task")


def attempt_vars(task: int, attempt: int, folder: str) -> dict[str, str]:
    """The variables a process of its own learns its attempt from (``current`` reads them)."""
    return {"SHOAL_TASK": str(task), "SHOAL_ATTEMPT": str(attempt), "SHOAL_TASK_DIR": folder}


def attempt_vars_bytes(task: int, attempt: int, folder: str) -> dict[bytes, bytes]:
    """``attempt_vars`` for an environment of bytes, built directly: it runs at every start
    of a command."""
    return {
        b"SHOAL_TASK": b"%d" % task,
        b"SHOAL_ATTEMPT": b"%d" % attempt,
        b"SHOAL_TASK_DIR": os.fsencode(folder),
    }


def killpg(pid: int, sig: int) -> None:
    """Signal a process group; one that is gone already is no error."""
    try:  # noqa: SIM105 - contextlib is one import more at a worker's start
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


PR_SET_CHILD_SUBREAPER = 36


def subreaper() -> bool:
    """Make this process the one that orphans of its descendants are given to (Linux's
    child subreaper), so that what a task started with ``setsid`` or a double fork stays
    within reach: ``end_children`` then ends it. False where it cannot be done."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError, ImportError):
        return False


def children() -> list[int]:
    """The pids of this process's children (orphans given to it included); [] where
    /proc does not say."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", "rb") as fh:
                pids.extend(int(x) for x in fh.read().split())
    except OSError:
        pass
    return pids


def end_children(spare: frozenset[int] = frozenset(), rounds: int = 20) -> None:
    """Kill every child of this process but ``spare`` (and the process group of any that
    leads one), then reap them; again while orphans keep being given to this process (a
    subreaper). Bounded: ``rounds`` passes."""
    for _ in range(rounds):
        kids = [pid for pid in children() if pid not in spare]
        if not kids:
            return
        for pid in kids:
            if leader(pid):
                killpg(pid, signal_kill())
            try:  # noqa: SIM105 - as in killpg
                os.kill(pid, signal_kill())
            except (ProcessLookupError, PermissionError):
                pass
        for pid in kids:
            try:  # noqa: SIM105
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def signal_kill() -> int:
    import signal

    return int(signal.SIGKILL)


def leader(pid: int) -> bool:
    """Whether ``pid`` still leads its own session. The processes shoal starts do; a pid
    reused by another process rarely does, so this guards a kill by a remembered pid."""
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def call_in_thread(
    fn: Callable[..., Any], payload: bytes, task: int, attempt: int, taskdir: str
) -> Reply:
    """``call`` for a task run in one of several threads: ``shoal.current()`` is this one."""
    _THREAD.current = Current(task, attempt, taskdir)
    try:
        return call(fn, payload, taskdir)
    finally:
        _THREAD.current = None


def with_inputs(payload: bytes, outputs: Outputs) -> bytes:
    """A payload that carries the outputs its references name (see INPUTS)."""
    return pickle.dumps((INPUTS, payload, outputs), protocol=5)


class InputError(Exception):
    """A reference of the arguments cannot be resolved (a selection that does not exist)."""


def arguments(payload: bytes, local: bytes | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``(args, kwargs)`` of a payload, references resolved; ``local`` is the pickled
    output of the task a follower follows."""
    obj = pickle.loads(payload)
    if len(obj) == 2:
        return obj  # type: ignore[no-any-return]
    _, inner, outputs = obj
    from shoal.errors import DefinitionError

    try:
        return _Resolving(inner, outputs, local).load()  # type: ignore[no-any-return]
    except DefinitionError as err:
        raise InputError(str(err)) from None


class _Resolving(pickle.Unpickler):
    """Unpickles arguments with each stored reference replaced by the value it selects.

    A ``StoredRef`` pickles as a call of its class (``__reduce__``), so naming another callable
    for that class here resolves every reference while the arguments are read, wherever it sits
    (nested containers, dataclasses, any object), with no second walk over the arguments.
    """

    def __init__(self, data: bytes, outputs: Outputs, local: bytes | None) -> None:
        super().__init__(io.BytesIO(data))
        self.outputs = outputs
        self.local = local
        self.values: dict[int, Any] = {}

    def find_class(self, module: str, name: str, /) -> Any:
        if name == "StoredRef" and module == "shoal.spec.refs":
            return self.resolve
        return super().find_class(module, name)

    def resolve(self, task: int, path: tuple[Any, ...] = ()) -> Any:
        from shoal.spec.refs import follow

        if task not in self.values:
            data = self.outputs[task][1]
            if data is None:
                data = self.local
            if data is None:  # the worker lost it: a bug, said plainly rather than guessed
                raise InputError(f"{self.outputs[task][0]}: not at hand where this task runs")
            self.values[task] = pickle.loads(data)
        return follow(self.values[task], path, self.outputs[task][0])


def call(fn: Callable[..., Any], payload: bytes, taskdir: str, local: bytes | None = None) -> Reply:
    started = time.time()
    try:
        args, kwargs = arguments(payload, local)
    except InputError as err:
        return False, None, "error", f"cannot prepare the inputs: {err}", started, time.time()
    except BaseException as err:
        return _raised(err, taskdir, started)
    try:
        value = fn(*args, **kwargs)
    except BaseException as err:
        return _raised(err, taskdir, started)
    ended = time.time()
    if type(value).__name__ == "Response" and type(value).__module__ == "shoal.spec.response":
        return _respond(value, taskdir, started, ended)
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception:
        try:
            import cloudpickle  # imported when needed: a worker starts faster without it

            data = cloudpickle.dumps(value, protocol=5)
        except Exception as err:
            why = f"a {type(value).__name__} that cannot be pickled"
            return _unsendable(why, err, "return plain data instead", taskdir, started, ended)
    return True, data, "", "", started, ended


def _raised(err: BaseException, taskdir: str, started: float) -> Reply:
    """The reply of a task whose code raised: the traceback, also in its folder."""
    import traceback

    text = "".join(traceback.format_exception(err))
    write(taskdir, "traceback.txt", text)
    return False, None, "error", f"{type(err).__name__}: {err}\n{text}", started, time.time()


def _unsendable(
    what: str, err: Exception, fix: str, taskdir: str, started: float, ended: float
) -> Reply:
    """The reply of a task whose return value cannot go back to the driver."""
    msg = f"the task returned {what} ({type(err).__name__}: {err}); {fix}"
    write(taskdir, "traceback.txt", msg + "\n")
    return False, None, "error", msg, started, ended


def _respond(value: Any, taskdir: str, started: float, ended: float) -> Reply:
    """A Response goes back whole (new tasks included), marked with the kind "response"."""
    from shoal.spec.response import encode

    try:
        return True, encode(value), "response", "", started, ended
    except Exception as err:
        why = "a Response that cannot be sent to the driver"
        fix = "its tasks' functions and arguments must pickle"
        return _unsendable(why, err, fix, taskdir, started, ended)


def write(taskdir: str, name: str, text: str) -> None:
    try:
        os.makedirs(taskdir, exist_ok=True)
        with open(os.path.join(taskdir, name), "w") as fh:
            fh.write(text)
    except OSError as err:  # the failure itself is still reported through the pipe
        print(f"shoal: cannot write {name} in {taskdir}: {err}", file=sys.stderr)


# -- commands: the words of their outcomes, the same wherever they run ----------------------
def signal_name(code: int) -> str:
    import signal

    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(code: int) -> tuple[str, str]:
    """(kind, words) for a process exit code."""
    if code < 0:
        name = signal_name(code)
        extra = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return "crash", f"the process was killed by {name}{extra}"
    return "exit", f"the process exited with code {code}"


def tail(path: Path | str, lines: int = 20) -> str:
    """The last lines of a text file (empty if it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def start_error(err: OSError, argv: list[str], workdir: str | None) -> str:
    """Why a command could not start (its exit code is 127, as in a shell)."""
    if err.filename is not None and workdir and str(err.filename) == str(workdir):
        return f"cannot start the command: its workdir {workdir!r} does not exist"
    what = err.filename or (argv[0] if argv else "the process")
    return f"cannot start {what!r}: {err.strerror or err}"


def command_reply(
    argv: list[str], code: int, folder: str, start: int, started: float, ended: float
) -> tuple[bool, bytes | None, str, str, float, float, int]:
    """The outcome of a command that ran: its value is ``{"returncode", "stdout", "dir"}``
    (stdout as text, up to STDOUT_LIMIT, of this attempt alone: it begins at byte ``start`` of
    the task's stdout file, -1 if it printed nothing); a non-zero exit is a failure that says
    why, with the last lines of its stderr."""
    import shlex

    if code != 0:
        kind, words = describe_exit(code)
        text = tail(os.path.join(folder, "stderr"))
        msg = f"command {shlex.join(argv)!r}: {words}" + (f"\n{text}" if text else "")
        return False, None, kind, msg, started, ended, code
    text = ""
    if start >= 0:
        with open(os.path.join(folder, "stdout"), "rb") as fh:
            fh.seek(start)
            text = fh.read(STDOUT_LIMIT).decode(errors="replace")
    value = {"returncode": 0, "stdout": text, "dir": folder}
    return True, pickle.dumps(value, protocol=5), "", "", started, ended, 0


def pin(cores: list[int] | None, env: dict[str, str]) -> None:
    """Apply a task's CPU affinity and environment to this process."""
    if cores:
        try:  # noqa: SIM105 - as in killpg
            os.sched_setaffinity(0, cores)
        except OSError:
            pass
    os.environ.update(env)
