"""A persistent worker process: runs Python tasks one after another, no interpreter start each.

Started by the local backend as ``python -m shoal.backends.worker FD``, it talks over one
socket (``multiprocessing.connection`` framing) to the driver. Messages in:
``("run", [(task, attempt, function, fn | None, payload, cores, env_id, env, taskdir, queued)])``
queues tasks, run in order (a function and an environment are sent once per worker, then
named by id; a payload is what ``execute.arguments`` reads: the arguments, or the arguments
with the small outputs their references need); ``("drop", task, attempt)`` removes a queued
task that has not started; ``("stop",)``. Replies: ``("done", [(task, attempt, ok, result,
kind, error, started, ended), ...])`` (several per message, see HOLD), ``("dropped", task,
attempt)``, and ``("ready",)`` once at start.

Output: file descriptors 1 and 2 point at per-worker spool files. After each task the worker
moves whatever the task printed into ``tasks/<id>/stdout`` and ``stderr``; a silent task costs
no file at all, which keeps tiny tasks cheap.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from shoal.backends import execute
from shoal.backends.execute import call, pin

# Replies of tiny tasks share messages: a finished task's reply is held while the next queued
# task is a prefetched one (the scheduler queues only tasks it expects to take milliseconds),
# for at most HOLD seconds counted at task boundaries, or until BATCH replies are held. A
# reply is never held when nothing is queued behind, so a dependent never waits on a quiet
# worker; the worst case is one unexpectedly long queued task.
HOLD = 0.001
BATCH = 64


def _drain(fd: int, taskdir: str, name: str) -> None:
    size = os.lseek(fd, 0, os.SEEK_CUR)
    if size <= 0:
        return
    os.makedirs(taskdir, exist_ok=True)
    with open(os.path.join(taskdir, name), "ab") as out:
        os.lseek(fd, 0, os.SEEK_SET)
        left = size
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 20), size - left)
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides how a run stops
    conn = Connection(int(argv[0]))
    # Whether a message waits, asked after every task: a poll object made once costs about a
    # microsecond, Connection.poll (a new selector each call) ten. The connection reads exactly
    # one message at a time, so nothing waits in a buffer that the descriptor would not show.
    waiting = select.poll()
    waiting.register(conn.fileno(), select.POLLIN)
    conn.send_bytes(pickle.dumps(("ready",)))
    functions: dict[int, Callable[..., Any]] = {}
    envs: dict[int, dict[str, str]] = {}
    env_now: dict[str, str] = {}
    cores_now: list[int] | None = None
    pending: deque[tuple[Any, ...]] = deque()
    replies: list[tuple[Any, ...]] = []
    first = 0.0  # when the oldest held reply was made
    while True:
        if replies and (
            not pending
            or not pending[0][-1]  # the next task was not prefetched: it may be long
            or len(replies) >= BATCH
            or time.monotonic() - first > HOLD
        ):
            conn.send_bytes(pickle.dumps(("done", replies), protocol=5))
            replies = []
        # Take every message that is already here (blocking only when there is no work), so a
        # "drop" reaches a queued task before it starts.
        while not pending or waiting.poll(0):
            try:
                msg = pickle.loads(conn.recv_bytes())
            except EOFError:
                return
            if msg[0] == "stop":
                return
            if msg[0] == "run":
                pending.extend(msg[1])
            elif msg[0] == "drop":
                for item in pending:
                    if item[0] == msg[1] and item[1] == msg[2]:
                        pending.remove(item)
                        conn.send_bytes(pickle.dumps(("dropped", msg[1], msg[2])))
                        break
        task, attempt, fid, fn_payload, payload, cores, env_id, env, taskdir, _ = pending.popleft()
        if fn_payload is not None:
            functions[fid] = cloudpickle.loads(fn_payload)
        if env is not None:
            envs[env_id] = env
        env = envs[env_id]
        if env is not env_now:  # change only what differs from the previous task
            for key, value in env.items():
                if env_now.get(key) != value:
                    os.environ[key] = value
            for key in env_now.keys() - env.keys():
                os.environ.pop(key, None)
            env_now = env
        # Not in os.environ: glibc's setenv keeps every distinct value it was ever given, so
        # per-task values there leak about 100 bytes a task. Tasks call shoal.current().
        execute.CURRENT = execute.Current(task, attempt, taskdir)
        if cores != cores_now:
            cores_now = cores
            pin(cores, {})
        reply = call(functions[fid], payload, taskdir)
        sys.stdout.flush()
        sys.stderr.flush()
        _drain(1, taskdir, "stdout")
        _drain(2, taskdir, "stderr")
        if not replies:
            first = time.monotonic()
        replies.append((task, attempt, *reply))


if __name__ == "__main__":
    main(sys.argv[1:])
