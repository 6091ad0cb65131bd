"""What runs inside a Dask worker for one shoal attempt (imported there by name).

Python tasks run in the worker's threads: the function is unpickled once per worker (cached by
the payload's hash) and called through :func:`shoal.backends.execute.call`, as in the local
workers. Commands run as child processes whose output goes to the task folder (the run
directory must be visible to the workers, as on a cluster's shared file system); the process
is registered so that :func:`stop` can kill it when shoal cancels the attempt.
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

from shoal.backends.execute import call_in_thread, command_reply, killpg, start_error

_functions: dict[tuple[int, int], Callable[..., Any]] = {}
_procs: dict[str, subprocess.Popen[bytes]] = {}
_stopped: set[str] = set()
_lock = threading.Lock()

Reply = tuple[bool, bytes | None, str, str, float, float, int | None]


def python(fn_payload: bytes, payload: bytes, taskdir: str, task: int, attempt: int) -> Reply:
    key = (hash(fn_payload), len(fn_payload))
    fn = _functions.get(key)
    if fn is None:
        fn = _functions[key] = cloudpickle.loads(fn_payload)
    ok, result, kind, error, started, ended = call_in_thread(fn, payload, task, attempt, taskdir)
    return ok, result, kind, error, started, ended, None


def isolated(
    key: str, fn_payload: bytes, payload: bytes, env: dict[str, str], taskdir: str, python: str
) -> Reply:
    """A Python task that needs its own environment (GPUs, env=): a fresh process, as in
    ``isolate=True`` locally; threads of one worker share one environment."""
    folder = Path(taskdir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "input.pkl", "wb") as fh:
        pickle.dump((fn_payload, payload), fh, protocol=5)
    _ok, _, kind, error, started, ended, code = command(
        key, [python, "-m", "shoal.backends.isolated", taskdir], False, None, env, taskdir
    )
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
        (started),
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
) -> Reply:
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
                _procs[key] = proc
                if key in _stopped:
                    proc.kill()
            code = proc.wait()
    except OSError as e:
        return False, None, "exit", start_error(e, argv, workdir), started, time.time(), 127
    finally:
        with _lock:
            _procs.pop(key, None)
            _stopped.discard(key)
    ended = time.time()
    _tidy(folder)
    return command_reply(argv, code, taskdir, (folder / "stdout").exists(), started, ended)


def stop(key: str) -> bool:
    """Kill the process of attempt ``key`` on this worker (run by ``client.run``)."""
    with _lock:
        proc = _procs.get(key)
        if proc is None:
            _stopped.add(key)  # it may not have started yet
            return False
    killpg(proc.pid, signal.SIGKILL)
    return True


def exit_worker() -> None:
    """End this worker process (run by ``client.run``); its nanny starts a fresh one. The only
    way to stop a Python task that runs in one of the worker's threads."""
    os._exit(70)


def _tidy(folder: Path) -> None:
    """Remove empty output files, as the local backend leaves no file for a silent task."""
    for name in ("stdout", "stderr"):
        p = folder / name
        if p.exists() and p.stat().st_size == 0:
            p.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty
