"""What runs inside a Dask worker for one shoal attempt (imported there by name).

Python tasks run in the worker's threads: the function is unpickled once per worker (cached by
the payload's hash) and called through :func:`shoal.backends.execute.call`, as in the local
workers. Commands run as child processes whose output goes to the task folder (the run
directory must be visible to the workers, as on a cluster's shared file system).

Every attempt registers itself here when it begins (:func:`_begin`, before the task's own code
or process starts), so that the driver can ask a worker what it is executing:
:func:`claim` (run by ``client.run``) answers for one attempt and stops it at once: a process
(a command, or a Python task in a process of its own) by its process group, SIGTERM then
SIGKILL after :data:`GRACE` seconds; an attempt that has not begun is marked so that it never
does (it then returns :data:`DROPPED`). A Python task running in one of the worker's threads
cannot be interrupted: ``claim`` says so, and the driver restarts the worker.

``after`` (every kind): the reply of the attempt this one was queued behind, or None. It is
not used: the driver passes that attempt's future only so that Dask starts this one after it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from shoal.backends.execute import GRACE, call_in_thread, command_reply, killpg, start_error

_functions: dict[tuple[int, int], Callable[..., Any]] = {}
# key -> (started, process or None for a Python task in a thread)
_running: dict[str, tuple[float, subprocess.Popen[bytes] | None]] = {}
_stopped: set[str] = set()  # claimed before they began: they never will
_lock = threading.Lock()

Reply = tuple[bool, bytes | None, str, str, float | None, float, int | None]
DROPPED = "dropped"  # the kind of the reply of an attempt claimed before it began


def _begin(key: str, proc: subprocess.Popen[bytes] | None = None) -> float | None:
    """Register attempt ``key`` as executing; None when it was claimed before it began."""
    now = time.time()
    with _lock:
        if key in _stopped:
            _stopped.discard(key)
            return None
        _running[key] = (now, proc)
    return now


def _end(key: str) -> None:
    with _lock:
        _running.pop(key, None)


def preload(modules: tuple[str, ...]) -> list[str]:
    """Import ``modules`` in this worker (run by ``client.run``); the ones that failed, each
    with why (the task that needs one meets the error again)."""
    import importlib

    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:
            failed.append(f"{name}: {type(err).__name__}: {err}")
    return failed


def _dropped() -> Reply:
    return False, None, DROPPED, "stopped before it began", None, time.time(), None


def python(
    key: str,
    fn_payload: bytes,
    payload: bytes,
    taskdir: str,
    task: int,
    attempt: int,
    after: Any = None,
) -> Reply:
    if _begin(key) is None:
        return _dropped()
    try:
        fkey = (hash(fn_payload), len(fn_payload))
        fn = _functions.get(fkey)
        if fn is None:
            fn = _functions[fkey] = cloudpickle.loads(fn_payload)
        ok, result, kind, error, started, ended = call_in_thread(
            fn, payload, task, attempt, taskdir
        )
    finally:
        _end(key)
    return ok, result, kind, error, started, ended, None


def isolated(
    key: str,
    fn_payload: bytes,
    payload: bytes,
    env: dict[str, str],
    taskdir: str,
    python: str,
    after: Any = None,
) -> Reply:
    """A Python task that needs its own environment (GPUs, env=, several cores): a fresh
    process, as in ``isolate=True`` locally; threads of one worker share one environment."""
    folder = Path(taskdir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "input.pkl", "wb") as fh:
        pickle.dump((fn_payload, payload), fh, protocol=5)
    _ok, _, kind, error, started, ended, code = command(
        key, [python, "-m", "shoal.backends.isolated", taskdir], False, None, env, taskdir
    )
    if kind == DROPPED:
        (folder / "input.pkl").unlink(missing_ok=True)
        return _dropped()
    reply = folder / "reply.pkl"
    if reply.exists():
        with open(reply, "rb") as fh:
            got: tuple[bool, bytes | None, str, str, float, float] = pickle.load(fh)
        reply.unlink()
        return (*got, code)
    return (
        False,
        None,
        kind or "crash",
        error or "the task's process ended without a result",
        started,
        ended,
        code,
    )


def command(
    key: str,
    argv: list[str],
    shell: bool,
    workdir: str | None,
    env: dict[str, str],
    taskdir: str,
    after: Any = None,
) -> Reply:
    with _lock:  # claimed before it began: start nothing
        if key in _stopped:
            _stopped.discard(key)
            return _dropped()
    started = time.time()
    folder = Path(taskdir)
    folder.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **env}
    line = ["/bin/sh", "-c", argv[0]] if shell else argv
    try:
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            proc = subprocess.Popen(
                line,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir or None,
                env=full,
                start_new_session=True,
            )
            with _lock:
                _running[key] = (started, proc)
                if key in _stopped:  # claimed while it was starting
                    _stopped.discard(key)
                    _stop(proc)
            code = proc.wait()
            killpg(proc.pid, signal.SIGKILL)  # what it left in its process group
    except OSError as e:
        return False, None, "exit", start_error(e, argv, workdir), started, time.time(), 127
    finally:
        _end(key)
    ended = time.time()
    _tidy(folder)
    start = 0 if (folder / "stdout").exists() else -1  # written afresh by this attempt
    return command_reply(argv, code, taskdir, start, started, ended)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group now, SIGKILL it after GRACE seconds if still there."""
    killpg(proc.pid, signal.SIGTERM)
    timer = threading.Timer(GRACE, killpg, (proc.pid, signal.SIGKILL))
    timer.daemon = True
    timer.start()


def claim(key: str, restart: bool = True) -> tuple[str, float | None]:
    """Stop attempt ``key`` on this worker (run by ``client.run``, synchronously). Answers:

    * ``("process", started)``: it was executing as a process; its process group is being
      stopped, and the attempt's own reply follows;
    * ``("thread", started)``: it is executing in a thread of this worker; with ``restart``
      this worker process ends a moment after answering (its nanny starts a new one);
    * ``("absent", None)``: it has not begun here (it never will), or it has ended.
    """
    with _lock:
        hit = _running.get(key)
        if hit is None:
            _stopped.add(key)
            return "absent", None
        started, proc = hit
        if proc is not None:
            _stop(proc)
            return "process", started
    if restart:
        _exit_soon()
    return "thread", started


def executing() -> list[str]:
    """The keys of the attempts executing on this worker now."""
    with _lock:
        return list(_running)


def _exit_soon(delay: float = 0.2) -> None:
    """End this worker process shortly (the answer to ``claim`` goes out first): the only way
    to stop a Python task that runs in one of its threads. Its processes go with it."""

    def bye() -> None:
        with _lock:
            for _, proc in _running.values():
                if proc is not None:
                    killpg(proc.pid, signal.SIGKILL)
        os._exit(70)

    timer = threading.Timer(delay, bye)
    timer.daemon = True
    timer.start()


def _tidy(folder: Path) -> None:
    """Remove empty output files, as the local backend leaves no file for a silent task."""
    for name in ("stdout", "stderr"):
        p = folder / name
        if p.exists() and p.stat().st_size == 0:
            p.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty
